//! The journal's filesystem chores, done on a thread of its own so that
//! the request path never waits for them: making the next segment ahead
//! (creating the file, reserving its blocks and taking its first write
//! fault cost milliseconds on ext4), cutting a segment that is done with to
//! its used length, unmapping a window whose pages are dirty, and removing
//! segments whose records are all committed.
//!
//! The journal asks for the next segment by number once the current one is
//! half full, and takes it at the switch if it is ready. If it is not, the
//! journal makes a segment of the next number itself and gives the one
//! asked for up: the thread, finding it no longer wanted when done, removes
//! it. Numbers are never reused, so the two never touch the same file;
//! replay reads whatever segments exist in the order of their numbers, gaps
//! included, and a segment made ahead and never written holds only zeros.
//!
//! Lock order: the journal's state, then the chores; the thread takes only
//! the chores.

use std::fs::File;
use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;

use memmap2::MmapMut;

use super::{Open, Sizes, map_window, populate, segment_path};

#[derive(Debug, Default)]
struct Chores {
    /// The segment the journal will take next, by number, if it is ready.
    wanted: Option<u64>,
    /// Being made by the thread.
    making: Option<u64>,
    /// Chores taken and being done, outside the lock.
    busy: bool,
    /// Made ahead: ready for the journal to take.
    made: Option<(u64, Open)>,
    /// The window of the current segment asked for ahead, and one mapped
    /// (its first byte's place in the file), ready to take.
    window_wanted: Option<WindowAsk>,
    window_made: Option<(u64, MmapMut)>,
    /// Moves on at every ask, take and cancel: a window mapped for an
    /// earlier one is not wanted.
    window_ticket: u64,
    /// Segments done with, and the bytes of each in use.
    finish: Vec<(Open, u64)>,
    /// Windows moved past.
    unmap: Vec<MmapMut>,
    /// Segments to remove.
    remove: Vec<u64>,
    /// Segments made here and handed over, and windows taken from here,
    /// ever (tests read them).
    made_count: u64,
    windows_taken: u64,
    /// Held back from working (tests).
    paused: bool,
    /// Held back, a segment made, from handing it over (tests), and
    /// whether it is waiting so.
    hold_made: bool,
    holding: bool,
    stop: bool,
}

impl Chores {
    fn idle(&self) -> bool {
        self.finish.is_empty()
            && self.unmap.is_empty()
            && self.remove.is_empty()
            && !self.wants_making()
            && self.window_wanted.is_none()
    }

    /// Nothing is asked ahead any more (a window being mapped for an
    /// earlier ask will not be wanted); the window mapped ahead, if one
    /// is, is taken out, with where it starts.
    fn end_window_ask(&mut self) -> Option<(u64, MmapMut)> {
        self.window_wanted = None;
        self.window_ticket += 1;
        self.window_made.take()
    }

    fn wants_making(&self) -> bool {
        self.wanted.is_some() && self.made.is_none() && self.making.is_none() && !self.stop
    }
}

#[derive(Debug)]
struct WindowAsk {
    file: Arc<File>,
    capacity: u64,
    at: u64,
    window: u64,
}

#[derive(Debug)]
struct Shared {
    chores: Mutex<Chores>,
    wake: Condvar,
    directory: PathBuf,
    sizes: Sizes,
}

/// The handle the journal holds: chores are posted under its lock, and the
/// thread is started at the first (or at once, with `start`).
#[derive(Debug)]
pub(super) struct Keeper {
    shared: Arc<Shared>,
    thread: Mutex<Option<JoinHandle<()>>>,
    /// The thread could not be started: chores are done where they are
    /// posted.
    inline: std::sync::atomic::AtomicBool,
}

impl Keeper {
    pub(super) fn new(directory: PathBuf, sizes: Sizes) -> Keeper {
        Keeper {
            shared: Arc::new(Shared {
                chores: Mutex::new(Chores::default()),
                wake: Condvar::new(),
                directory,
                sizes,
            }),
            thread: Mutex::new(None),
            inline: std::sync::atomic::AtomicBool::new(false),
        }
    }

    fn chores(&self) -> MutexGuard<'_, Chores> {
        self.shared
            .chores
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Starts the thread now (a write-ahead journal does at open, so that
    /// no request starts it).
    pub(super) fn start(&self) {
        let mut thread = self.thread.lock().unwrap_or_else(PoisonError::into_inner);
        if thread.is_some() || self.inline.load(std::sync::atomic::Ordering::Relaxed) {
            return;
        }
        let shared = self.shared.clone();
        match std::thread::Builder::new()
            .name("journal-keeper".into())
            .spawn(move || work(&shared))
        {
            Ok(handle) => *thread = Some(handle),
            Err(error) => {
                tracing::warn!(%error, "the request journal's keeper thread cannot start; its file chores are done on the request path");
                self.inline
                    .store(true, std::sync::atomic::Ordering::Relaxed);
            }
        }
    }

    /// Applies `post` to the chores and wakes the thread (started if it
    /// was not), or, without one, does the chores here.
    fn post(&self, post: impl FnOnce(&mut Chores)) {
        self.start();
        let mut chores = self.chores();
        post(&mut chores);
        if self.inline.load(std::sync::atomic::Ordering::Relaxed) {
            run_all(&self.shared, chores);
        } else {
            drop(chores);
            self.shared.wake.notify_one();
        }
    }

    /// Asks for segment `number` to be made ahead.
    pub(super) fn want(&self, number: u64) {
        self.post(|chores| chores.wanted = Some(number));
    }

    /// The segment made ahead, if it is ready, with its number; whether or
    /// not it is, nothing is wanted from here on (one not ready yet is
    /// given up, and removed once made).
    pub(super) fn take(&self) -> Option<(u64, Open)> {
        let mut chores = self.chores();
        chores.wanted = None;
        chores.made.take()
    }

    /// Asks for the window of `file` (of `capacity` reserved bytes) that
    /// starts at `at` to be mapped, its pages' write faults taken.
    /// Without the thread, nothing is asked: the appends fault the pages
    /// one by one rather than one append all at once.
    pub(super) fn want_window(&self, file: &Arc<File>, capacity: u64, at: u64, window: u64) {
        if self.inline.load(std::sync::atomic::Ordering::Relaxed) {
            return;
        }
        let file = file.clone();
        self.post(|chores| {
            if let Some((_, stale)) = chores.window_made.take() {
                chores.unmap.push(stale);
            }
            chores.window_ticket += 1;
            chores.window_wanted = Some(WindowAsk {
                file,
                capacity,
                at,
                window,
            });
        });
    }

    /// The window asked for, if it is mapped and starts at `at`; whether or
    /// not it is, nothing is asked from here on.
    pub(super) fn take_window(&self, at: u64) -> Option<MmapMut> {
        let mut chores = self.chores();
        match chores.end_window_ask() {
            Some((start, map)) if start == at => {
                chores.windows_taken += 1;
                Some(map)
            }
            Some((_, stale)) => {
                chores.unmap.push(stale);
                drop(chores);
                self.shared.wake.notify_one();
                None
            }
            None => None,
        }
    }

    /// The segment is done with: a window asked of it is not wanted.
    pub(super) fn cancel_window(&self) {
        let mut chores = self.chores();
        if let Some((_, stale)) = chores.end_window_ask() {
            chores.unmap.push(stale);
            drop(chores);
            self.shared.wake.notify_one();
        }
    }

    /// A segment done with, `used` bytes of it in use: unmapped and cut to
    /// that length.
    pub(super) fn finish(&self, open: Open, used: u64) {
        self.post(|chores| chores.finish.push((open, used)));
    }

    /// A window moved past: unmapped.
    pub(super) fn unmap(&self, map: MmapMut) {
        self.post(|chores| chores.unmap.push(map));
    }

    /// A segment whose records are all committed: removed.
    pub(super) fn remove(&self, number: u64) {
        self.post(|chores| chores.remove.push(number));
    }

    /// Does every chore posted, stops the thread, and removes a segment
    /// made ahead and not taken.
    pub(super) fn stop(&self) {
        let handle = {
            let mut thread = self.thread.lock().unwrap_or_else(PoisonError::into_inner);
            // Whatever is posted from here on is done where it is posted.
            self.inline
                .store(true, std::sync::atomic::Ordering::Relaxed);
            thread.take()
        };
        {
            let mut chores = self.chores();
            chores.stop = true;
            chores.paused = false;
            chores.hold_made = false;
            chores.wanted = None;
            if let Some((_, stale)) = chores.end_window_ask() {
                chores.unmap.push(stale);
            }
        }
        self.shared.wake.notify_all();
        if let Some(handle) = handle {
            let _ = handle.join();
        }
        let mut chores = self.chores();
        if let Some((number, open)) = chores.made.take() {
            drop(open);
            let _ = std::fs::remove_file(segment_path(&self.shared.directory, number));
        }
        run_all(&self.shared, chores);
    }

    /// The number of the segment made ahead and ready, if one is.
    #[cfg(test)]
    pub(super) fn chores_made(&self) -> Option<u64> {
        self.chores().made.as_ref().map(|(number, _)| *number)
    }

    /// Segments made ahead so far, and windows taken mapped ahead.
    #[cfg(test)]
    pub(super) fn made_count(&self) -> (u64, u64) {
        let chores = self.chores();
        (chores.made_count, chores.windows_taken)
    }

    /// Holds the thread back from its chores, or lets it go on.
    #[cfg(test)]
    pub(super) fn pause(&self, paused: bool) {
        self.chores().paused = paused;
        self.shared.wake.notify_all();
    }

    /// Holds the thread back, once it has made a segment, from handing it
    /// over, or lets it go on.
    #[cfg(test)]
    pub(super) fn hold_made(&self, hold: bool) {
        self.chores().hold_made = hold;
        self.shared.wake.notify_all();
    }

    /// The segment made and held back from being handed over, if one is.
    #[cfg(test)]
    pub(super) fn holding(&self) -> Option<u64> {
        let chores = self.chores();
        chores.holding.then_some(chores.making).flatten()
    }

    /// Waits until the thread has nothing to do (tests).
    #[cfg(test)]
    pub(super) fn settle(&self) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        loop {
            assert!(
                std::time::Instant::now() < deadline,
                "the keeper did not finish its chores in 20 s"
            );
            {
                let chores = self.chores();
                if (chores.idle() || chores.paused) && !chores.busy {
                    return;
                }
            }
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
    }
}

impl Drop for Keeper {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The thread: waits for chores and does them, until stopped with nothing
/// left to do. Nothing it does is urgent, so it yields its core to the
/// threads serving requests (nice 10: on Linux a thread's own).
fn work(shared: &Shared) {
    #[cfg(target_os = "linux")]
    // SAFETY: plain system calls on this thread, with no memory passed.
    unsafe {
        libc::setpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t, 10);
    }
    let mut chores = shared.chores.lock().unwrap_or_else(PoisonError::into_inner);
    loop {
        while chores.paused || (chores.idle() && !chores.stop) {
            chores = shared
                .wake
                .wait(chores)
                .unwrap_or_else(PoisonError::into_inner);
        }
        if chores.idle() && chores.stop {
            return;
        }
        chores = run_once(shared, chores);
    }
}

/// Does every chore there is, the lock given back meanwhile.
fn run_all<'a>(shared: &'a Shared, mut chores: MutexGuard<'a, Chores>) {
    while !chores.idle() {
        chores = run_once(shared, chores);
    }
}

/// Does the chores posted so far, outside the lock, and takes it back.
fn run_once<'a>(shared: &'a Shared, mut chores: MutexGuard<'a, Chores>) -> MutexGuard<'a, Chores> {
    let unmap = std::mem::take(&mut chores.unmap);
    let finish = std::mem::take(&mut chores.finish);
    let remove = std::mem::take(&mut chores.remove);
    let make = if chores.wants_making() {
        chores.making = chores.wanted;
        chores.wanted
    } else {
        None
    };
    let window = chores
        .window_wanted
        .take()
        .map(|ask| (chores.window_ticket, ask));
    chores.busy = true;
    drop(chores);
    drop(unmap);
    for (open, used) in finish {
        open.finish(used);
    }
    for number in remove {
        let _ = std::fs::remove_file(segment_path(&shared.directory, number));
    }
    // Mapped and its faults taken before the window is offered; the journal
    // may have moved on meanwhile (then it is unmapped), but the file is
    // not cut before this is done: cutting it is a chore of this thread's
    // (or of `stop`'s caller, once this thread has ended).
    let window = window.and_then(|(ticket, ask)| {
        let map = map_window(&ask.file, ask.capacity, ask.at, ask.window).ok()?;
        populate(&map);
        Some((ticket, ask.at, map))
    });
    let made = make.map(|number| {
        let sizes = shared.sizes;
        let path = segment_path(&shared.directory, number);
        (
            number,
            Open::create(&path, sizes.segment, sizes.map, sizes.window, true),
        )
    });
    let mut chores = shared.chores.lock().unwrap_or_else(PoisonError::into_inner);
    while chores.hold_made && made.is_some() {
        chores.holding = true;
        chores = shared
            .wake
            .wait(chores)
            .unwrap_or_else(PoisonError::into_inner);
    }
    chores.holding = false;
    chores.busy = false;
    if let Some((ticket, at, map)) = window {
        // Unless the journal asked again, took or cancelled meanwhile.
        if chores.window_ticket == ticket {
            chores.window_made = Some((at, map));
        } else {
            chores.unmap.push(map);
        }
    }
    if let Some((number, open)) = made {
        chores.making = None;
        match open {
            Ok(open) if chores.wanted == Some(number) => {
                chores.made = Some((number, open));
                chores.made_count += 1;
            }
            Ok(open) => {
                // Given up while it was made (the journal made its own):
                // unmapped and removed by the next round, outside the lock.
                chores.finish.push((open, 0));
                chores.remove.push(number);
            }
            Err(error) => {
                // The journal will try itself at the switch, and report.
                tracing::warn!(%error, "the request journal's next segment cannot be made ahead");
                chores.remove.push(number);
                if chores.wanted == Some(number) {
                    chores.wanted = None;
                }
            }
        }
    }
    chores
}
