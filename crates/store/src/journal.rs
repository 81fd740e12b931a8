//! The request log's write-ahead journal: every record is appended to a
//! local file before its response completes, so that a record whose
//! request the client saw finish survives the process being killed
//! (SIGKILL, an out-of-memory kill), even though the database receives it
//! in a batch a little later.
//!
//! An append is a copy into a shared memory map of the segment file, under
//! a lock: the bytes are in the operating system's page cache as soon as
//! they are copied, with no system call and no `fsync`, so an append costs
//! well under a microsecond and survives the death of the process (not a
//! power failure of the machine, which the database's own durability
//! settings cover for what it holds). A segment's blocks are reserved when
//! it is created (`fallocate`), so that no write into the map can fault for
//! lack of space: only on filesystems where a reservation guarantees that
//! (ext4, XFS, tmpfs, overlayfs), and only if the space could be reserved;
//! otherwise the segment is written with one positional `write` per record
//! (which fails with an error, turning the journal off, rather than with a
//! signal). A mapped segment takes its first write fault when it is
//! created (on ext4 the first write through a map of a new file waits for
//! the filesystem for milliseconds), so the first segment's is paid at
//! start, not by the first request. The map is a window of the segment,
//! moved along as it fills, so the process holds one or two windows of it
//! in memory (the next is mapped ahead).
//!
//! None of that waits on the request path while the keeper keeps up: the
//! journal's keeper thread (`keeper`) makes the next segment once the
//! current one is half full, maps the next window once the current one is
//! half used and takes its pages' write faults (each first write to a page
//! faults, a few µs, and on ext4 may wait for the filesystem's own journal
//! for a millisecond), and unmaps, cuts and removes what the journal is
//! done with. An append that finds the next segment or window not ready
//! makes its own, as before, and leaves its pages to fault as written.
//!
//! A segment is cut to its used length (by the keeper) once the next one
//! begins; one left behind by a killed process ends in zeros, which replay
//! skips, as it skips a record cut short (each is a checksummed frame, see
//! `frame`); a segment made ahead and never used holds only zeros. Records are
//! numbered in the order they are appended and queued; the record writer
//! reports the highest number it has committed, and segments whose records
//! are all committed are deleted. On start, `replay` inserts into the database the
//! records of the segments a previous process left behind that the
//! database does not hold yet, then deletes them.
//!
//! The queue of records waiting for the record writer lives here too, under
//! the same lock: an append puts its record on the queue while it holds
//! the journal anyway, so handing a record over costs the request path no
//! synchronisation of its own, and the writer takes the whole queue at
//! once (one swap) each time it wakes.
//!
//! A record the queue could not take (it was full) is noted with its place
//! in the journal (segment, offset, length): the record writer reads it
//! back and writes it as soon as it has written what was queued before it,
//! so a burst larger than the queue spills to disk and is still written
//! while the gateway runs; its segment is kept until then (and a next start
//! replays it if the process dies first).

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use memmap2::{MmapMut, MmapOptions};
use switchboard_core::RequestRecord;
use tokio::sync::Notify;

use crate::frame;
use crate::{Store, StoreError};

mod keeper;
use keeper::Keeper;

/// A segment's size (a record larger than this gets a segment of its own,
/// as large as it needs), and the window of it mapped at a time.
#[derive(Debug, Clone, Copy)]
struct Sizes {
    segment: u64,
    window: u64,
    /// Whether segments may be mapped (tests write plainly too).
    map: bool,
}

/// The most a spill file holds (about; by whole segments): past it,
/// records the queue refuses are dropped, and counted.
const SPILL_BYTES: u64 = 1024 * 1024 * 1024;

const SIZES: Sizes = Sizes {
    segment: 32 * 1024 * 1024,
    window: 1024 * 1024,
    map: true,
};

/// The segment being appended to, and how it is written.
#[derive(Debug)]
struct Open {
    /// Shared with the keeper, which maps windows of it ahead.
    file: Arc<File>,
    /// The bytes it may hold before the next segment begins (reserved, when
    /// mapped).
    capacity: u64,
    mode: Mode,
    /// Whether the window after the one mapped has been asked for.
    window_asked: bool,
}

#[derive(Debug)]
enum Mode {
    /// Copied into a shared map of the file: a window of it, where it
    /// starts in the file, and the window (unmapped between windows).
    Mapped(Option<(u64, MmapMut)>),
    /// One positional `write` per record: where a map is not known to be
    /// safe (a filesystem other than ext4, XFS, tmpfs or overlayfs, whose
    /// reserved blocks a write through the map cannot fail on), or where
    /// the space could not be reserved.
    Plain,
}

impl Open {
    /// Creates segment `path`, mapped with `capacity` bytes reserved where
    /// that is safe (its first window of `window` bytes mapped at once, and,
    /// made `ahead` of need, its pages' write faults taken), else written
    /// plainly.
    fn create(
        path: &Path,
        capacity: u64,
        map: bool,
        window: u64,
        ahead: bool,
    ) -> std::io::Result<Open> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(path)?;
        let mut open = Open {
            file: Arc::new(file),
            capacity,
            mode: Mode::Plain,
            window_asked: false,
        };
        if map && mappable(&open.file) {
            open.reserve(capacity);
            open.first_fault(window, ahead);
        }
        Ok(open)
    }

    /// Maps the first window and takes the file's first write fault now,
    /// writing the zero already there. On ext4 the first write through any
    /// map of a new file waits for the filesystem (2–14 ms measured here;
    /// each later page about 3 µs): the journal opens its first segment
    /// when the gateway starts, and the keeper the later ones ahead, so
    /// that wait is no request's. Made `ahead` so, the window's other
    /// pages' faults are taken too (about a millisecond for 1 MiB), which a
    /// segment made by an append leaves to the appends. A map that fails
    /// here is tried again, and its error reported, by the first `put`.
    fn first_fault(&mut self, window: u64, ahead: bool) {
        let Mode::Mapped(mapped) = &mut self.mode else {
            return;
        };
        if self.capacity == 0 {
            return;
        }
        if let Ok(mut map) = map_window(&self.file, self.capacity, 0, window) {
            map[0] = 0;
            if ahead {
                populate(&map);
            }
            *mapped = Some((0, map));
        }
    }

    /// Reserves `capacity` bytes and writes through a map from now on; if
    /// they cannot be reserved (a full disk), writes plainly instead.
    fn reserve(&mut self, capacity: u64) {
        self.capacity = capacity;
        match reserve(&self.file, capacity) {
            Ok(()) => {
                if let Mode::Plain = self.mode {
                    self.mode = Mode::Mapped(None);
                }
            }
            Err(error) => {
                if let Mode::Mapped(window) = &mut self.mode {
                    *window = None;
                }
                tracing::warn!(%error, "the request journal's space cannot be reserved; it is written record by record");
                self.mode = Mode::Plain;
            }
        }
    }

    /// A segment with nothing in it yet grows to hold a record larger
    /// than itself.
    fn grow(&mut self, capacity: u64) {
        match self.mode {
            Mode::Mapped(_) => self.reserve(capacity),
            Mode::Plain => self.capacity = capacity,
        }
    }

    /// Writes `bytes` into the file at `at` (within `capacity`): through
    /// windows of `window` bytes of the map, or with one write. The window
    /// after the current one is asked of the keeper once the current one is
    /// half used, and taken from it if ready (else mapped here); a window
    /// moved past goes to the keeper to unmap.
    fn put(
        &mut self,
        mut at: u64,
        mut bytes: &[u8],
        window: u64,
        keeper: &Keeper,
    ) -> std::io::Result<()> {
        let Mode::Mapped(mapped) = &mut self.mode else {
            return write_at(&self.file, bytes, at);
        };
        while !bytes.is_empty() {
            let inside = mapped
                .as_ref()
                .is_some_and(|(start, map)| at >= *start && at < *start + map.len() as u64);
            if !inside {
                if let Some((_, old)) = mapped.take() {
                    keeper.unmap(old);
                }
                let ahead = self.window_asked.then(|| keeper.take_window(at)).flatten();
                self.window_asked = false;
                let map = match ahead {
                    Some(map) => map,
                    None => map_window(&self.file, self.capacity, at, window)?,
                };
                *mapped = Some((at, map));
            }
            let Some((start, map)) = mapped.as_mut() else {
                unreachable!("a window was just mapped");
            };
            let from = (at - *start) as usize;
            let count = bytes.len().min(map.len() - from);
            map[from..from + count].copy_from_slice(&bytes[..count]);
            bytes = &bytes[count..];
            at += count as u64;
        }
        // Asked once the record is in: a record that crosses into the next
        // window maps that one itself.
        if let Some((start, map)) = mapped.as_ref() {
            let end = *start + map.len() as u64;
            if !self.window_asked && (at - *start) * 2 >= map.len() as u64 && end < self.capacity {
                self.window_asked = true;
                keeper.want_window(&self.file, self.capacity, end, window);
            }
        }
        Ok(())
    }

    /// Unmaps the window and cuts the file to the `used` bytes.
    fn finish(mut self, used: u64) {
        self.mode = Mode::Plain;
        let _ = self.file.set_len(used);
    }
}

/// Takes the write faults of every page of `map` now (`MADV_POPULATE_WRITE`,
/// Linux 5.14 and later), without writing to them: each first write to a
/// page of a segment otherwise faults (a few µs, and on ext4 it may wait
/// for the filesystem's journal). Where the kernel cannot, the pages fault
/// when written, as before.
fn populate(map: &MmapMut) {
    #[cfg(target_os = "linux")]
    let _ = map.advise(memmap2::Advice::PopulateWrite);
    #[cfg(not(target_os = "linux"))]
    let _ = map;
}

/// Maps the window of `file` (of `capacity` reserved bytes) that starts at
/// `at`: `window` bytes, or what is left of the capacity.
fn map_window(file: &File, capacity: u64, at: u64, window: u64) -> std::io::Result<MmapMut> {
    let len = usize::try_from(window.min(capacity - at)).map_err(std::io::Error::other)?;
    // SAFETY: the map is of a file only this process writes (the journal's
    // lock keeps other instances out) and never shortens while it is
    // mapped: `Open::finish` drops its own window before cutting the file;
    // a window the keeper mapped ahead is given back (`cancel_window`)
    // before the segment's `finish` is posted, one still being mapped is
    // turned into an unmap by its ticket, and the keeper unmaps before it
    // cuts, in each round; `close` cuts only after the keeper has stopped.
    // Its blocks are reserved on a filesystem where that means a write
    // through the map cannot fail (`mappable`).
    unsafe { MmapOptions::new().offset(at).len(len).map_mut(file) }
}

/// Creates `directory` for this process alone: it must not exist yet (a
/// directory or link someone else placed there is refused), and only its
/// owner may enter it.
fn private_directory(directory: &Path) -> std::io::Result<()> {
    let mut builder = std::fs::DirBuilder::new();
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder.create(directory)
}

#[cfg(unix)]
fn write_at(file: &File, bytes: &[u8], at: u64) -> std::io::Result<()> {
    std::os::unix::fs::FileExt::write_all_at(file, bytes, at)
}

#[cfg(not(unix))]
fn write_at(mut file: &File, bytes: &[u8], at: u64) -> std::io::Result<()> {
    use std::io::Write;
    file.seek(SeekFrom::Start(at))?;
    file.write_all(bytes)
}

/// Whether `file` lies on a filesystem where blocks reserved by
/// `fallocate` can be written through a shared map without a fault: ext4,
/// XFS, tmpfs and overlayfs (over those). Elsewhere (btrfs, whose
/// copy-on-write can still run out of space, network filesystems) the
/// journal writes plainly.
#[cfg(target_os = "linux")]
#[allow(clippy::unnecessary_cast)] // `f_type`'s type differs between targets
fn mappable(file: &File) -> bool {
    use std::os::fd::AsRawFd;
    let mut stats = std::mem::MaybeUninit::<libc::statfs>::uninit();
    // SAFETY: `fstatfs` fills the struct it is given for a descriptor
    // borrowed for the call; it is read only when the call succeeded.
    let kind = unsafe {
        if libc::fstatfs(file.as_raw_fd(), stats.as_mut_ptr()) != 0 {
            return false;
        }
        stats.assume_init().f_type as i64
    };
    [
        libc::EXT4_SUPER_MAGIC as i64,
        libc::XFS_SUPER_MAGIC as i64,
        libc::TMPFS_MAGIC as i64,
        libc::OVERLAYFS_SUPER_MAGIC as i64,
    ]
    .contains(&kind)
}

#[cfg(not(target_os = "linux"))]
fn mappable(_: &File) -> bool {
    false
}

/// Reserves the blocks of `file`'s first `len` bytes, so that writing them
/// through a map cannot fail for lack of space.
#[cfg(target_os = "linux")]
fn reserve(file: &File, len: u64) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let len = libc::off_t::try_from(len).map_err(std::io::Error::other)?;
    loop {
        // SAFETY: a plain system call on a file descriptor this function
        // borrows for its duration.
        match unsafe { libc::posix_fallocate(file.as_raw_fd(), 0, len) } {
            0 => return Ok(()),
            libc::EINTR => continue,
            code => return Err(std::io::Error::from_raw_os_error(code)),
        }
    }
}

#[cfg(not(target_os = "linux"))]
fn reserve(_: &File, _: u64) -> std::io::Result<()> {
    Err(std::io::Error::other("reserved only on Linux"))
}

#[derive(Debug)]
struct Segment {
    number: u64,
    /// The highest record number in it.
    last: u64,
}

/// Where a record the queue could not take lies in the journal.
#[derive(Debug, Clone, Copy)]
struct Overflow {
    number: u64,
    segment: u64,
    offset: u64,
    len: usize,
}

/// What became of an appended record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Appended {
    /// On the queue, for the record writer.
    Queued,
    /// The queue could not take it (the reason): it is in the journal or
    /// the spill file, from where the writer reads it back.
    Spilled(&'static str),
    /// Neither queued nor kept anywhere (the reason): lost.
    Lost(&'static str),
}

/// About what a record holds in memory: its fixed part, and the texts that
/// can be large (bodies, metadata).
pub(crate) fn footprint(record: &RequestRecord) -> usize {
    let bodies = record.bodies.as_ref().map_or(0, |bodies| {
        bodies.request.len() + bodies.response.as_ref().map_or(0, String::len)
    });
    std::mem::size_of::<RequestRecord>()
        + record.request_id.len()
        + record.model.len()
        + record.metadata.as_ref().map_or(0, String::len)
        + record.attempt_details.len() * 64
        + bodies
}

#[derive(Debug)]
struct State {
    /// The segment appended to; `None` once the journal is broken.
    open: Option<Open>,
    segment: u64,
    /// The number the next segment made gets (never reused, see `keeper`).
    next_segment: u64,
    /// Whether the next segment has been asked for ahead.
    asked: bool,
    /// Segments the request path had to make itself (tests read it).
    made_here: u64,
    /// The bytes used in the current segment.
    bytes: u64,
    /// The next record's number (numbers start at 1).
    next: u64,
    /// Closed segments not yet wholly committed.
    closed: Vec<Segment>,
    /// Records the queue could not take, oldest first, until the writer
    /// has written them from here; segments from the first on are kept.
    overflow: VecDeque<Overflow>,
    /// The highest record number the queue took.
    last_queued: u64,
    committed: u64,
    /// A spill file not created yet: it is, at the first record it takes.
    unopened: bool,
    /// Records waiting for the record writer, oldest first, and their
    /// numbers.
    queue: Vec<RequestRecord>,
    numbers: Vec<u64>,
    /// What the queued records hold in memory (`footprint`), and what the
    /// records the writer took and has not finished with hold.
    queued_bytes: usize,
    writing_bytes: usize,
    /// The queue's bounds: records queued, and bytes queued or being
    /// written.
    capacity: usize,
    byte_limit: usize,
    /// Whether the writer takes records (not once it has stopped).
    accepting: bool,
}

impl State {
    fn new(open: Option<Open>, segment: u64, unopened: bool) -> State {
        State {
            open,
            segment,
            next_segment: segment + 1,
            asked: false,
            made_here: 0,
            bytes: 0,
            next: 1,
            closed: Vec::new(),
            overflow: VecDeque::new(),
            last_queued: 0,
            committed: 0,
            unopened,
            queue: Vec::new(),
            numbers: Vec::new(),
            queued_bytes: 0,
            writing_bytes: 0,
            capacity: 65_536,
            byte_limit: crate::recorder::QUEUE_BYTES,
            accepting: true,
        }
    }

    /// Why the queue cannot take a record of `size` bytes (`footprint`)
    /// now, if it cannot.
    fn refusal(&self, size: usize) -> Option<&'static str> {
        let held = self.queued_bytes + self.writing_bytes;
        if !self.accepting {
            Some("the record writer has stopped")
        } else if self.queue.len() >= self.capacity {
            Some("the record queue is full")
        } else if held > 0 && held + size > self.byte_limit {
            // One record always fits, however large.
            Some("the record queue holds as much memory as it may")
        } else {
            None
        }
    }

    /// A record the queue refused (for `reason`): noted for the writer to
    /// read back from where it was written (`place`), or lost when it
    /// could not be written.
    fn note_overflow(
        &mut self,
        number: u64,
        place: Option<(u64, u64)>,
        len: usize,
        reason: &'static str,
    ) -> Appended {
        let Some((segment, offset)) = place else {
            return Appended::Lost(reason);
        };
        self.overflow.push_back(Overflow {
            number,
            segment,
            offset,
            len,
        });
        Appended::Spilled(reason)
    }

    fn push(&mut self, number: u64, record: RequestRecord, size: usize) {
        self.queued_bytes += size;
        self.queue.push(record);
        self.numbers.push(number);
        self.last_queued = number;
    }
}

#[derive(Debug)]
pub struct Journal {
    pub(crate) directory: PathBuf,
    sizes: Sizes,
    /// A write-ahead journal holds every record; a spill file (`spill`)
    /// only those the queue could not take.
    write_ahead: bool,
    /// Whether records the queue refuses go to a file (a spill file); a
    /// queue-only journal (`queue_only`) has none.
    spills: bool,
    state: Mutex<State>,
    /// Wakes the record writer when the queue gets a record.
    queued: Notify,
    /// Makes segments ahead and does the other filesystem chores, off the
    /// request path.
    keeper: Keeper,
    /// Held for the process's life: one instance per journal (a spill
    /// file's directory is private to its process and needs none).
    _lock: Option<File>,
}

fn segment_path(directory: &Path, number: u64) -> PathBuf {
    directory.join(format!("records-{number:012}.bin"))
}

fn io_error(directory: &Path, error: std::io::Error) -> StoreError {
    StoreError::Open {
        location: directory.display().to_string(),
        message: format!("the request journal: {error}"),
    }
}

/// Segments found in the directory, oldest first, with their paths: this
/// version's, and the JSON-line segments (`.jsonl`) of earlier versions.
fn segments(directory: &Path) -> Result<Vec<(u64, PathBuf)>, StoreError> {
    let mut found: Vec<(u64, PathBuf)> = std::fs::read_dir(directory)
        .map_err(|error| io_error(directory, error))?
        .filter_map(|entry| {
            let entry = entry.ok()?;
            let name = entry.file_name().into_string().ok()?;
            let stem = name.strip_prefix("records-")?;
            let number = stem
                .strip_suffix(".bin")
                .or_else(|| stem.strip_suffix(".jsonl"))?
                .parse()
                .ok()?;
            Some((number, entry.path()))
        })
        .collect();
    found.sort_unstable();
    Ok(found)
}

impl Journal {
    /// Replays what a previous process left in `directory` into `store`,
    /// then opens a fresh segment. Returns the journal and how many
    /// records were recovered.
    pub async fn open(directory: &Path, store: &dyn Store) -> Result<(Journal, usize), StoreError> {
        Self::open_sized(directory, store, SIZES).await
    }

    /// A spill file for an instance without a journal: a private
    /// directory under the system's temporary directory, created at the
    /// first record the queue cannot take, that holds only such records
    /// until the writer has written them (nothing is written ahead, and
    /// nothing replays it after a crash). Removed at a clean end.
    pub fn spill() -> Journal {
        use std::hash::{BuildHasher, Hasher};
        // A name no one can guess ahead (the temporary directory may be
        // shared), made with the standard library's random hash keys.
        let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
        hasher.write_u32(std::process::id());
        let directory = std::env::temp_dir().join(format!(
            "switchboard-spill-{}-{:016x}",
            std::process::id(),
            hasher.finish()
        ));
        let sizes = Sizes {
            map: false,
            ..SIZES
        };
        Journal {
            keeper: Keeper::new(directory.clone(), sizes),
            directory,
            sizes,
            write_ahead: false,
            spills: true,
            state: Mutex::new(State::new(None, 1, true)),
            queued: Notify::new(),
            _lock: None,
        }
    }

    /// The queue alone, with no file: records it cannot take are lost
    /// (counted). For stores that need no journal, and tests.
    pub fn queue_only() -> Journal {
        Journal {
            directory: PathBuf::new(),
            sizes: SIZES,
            write_ahead: false,
            spills: false,
            state: Mutex::new(State::new(None, 1, false)),
            queued: Notify::new(),
            keeper: Keeper::new(PathBuf::new(), SIZES),
            _lock: None,
        }
    }

    /// Removes the spill directories that instances of this user left in
    /// `temporary` when they were killed (their process is gone), and
    /// returns how many records those held. Nothing says which database
    /// such records were meant for, so they cannot be written: they are
    /// lost, and this says so rather than leaving the files to pile up.
    /// Only on Linux, where a process's liveness is known from `/proc`.
    pub fn clear_abandoned_spills(temporary: &Path) -> usize {
        #[cfg(target_os = "linux")]
        {
            use std::os::unix::fs::MetadataExt;
            // SAFETY: geteuid has no preconditions and cannot fail.
            let user = unsafe { libc::geteuid() };
            let Ok(entries) = std::fs::read_dir(temporary) else {
                return 0;
            };
            let mut lost = 0;
            for entry in entries.flatten() {
                let name = entry.file_name();
                let Some(pid) = name
                    .to_str()
                    .and_then(|name| name.strip_prefix("switchboard-spill-"))
                    .and_then(|rest| rest.split_once('-'))
                    .and_then(|(pid, _)| pid.parse::<u32>().ok())
                else {
                    continue;
                };
                // A real directory of this user, whose process has ended
                // (a process still running keeps its own).
                let Ok(metadata) = std::fs::symlink_metadata(entry.path()) else {
                    continue;
                };
                if !metadata.is_dir()
                    || metadata.uid() != user
                    || pid == std::process::id()
                    || Path::new("/proc").join(pid.to_string()).exists()
                {
                    continue;
                }
                let Ok(files) = segments(&entry.path()) else {
                    continue;
                };
                for (_, path) in files {
                    if let Ok(bytes) = std::fs::read(&path) {
                        lost += frame::records(&bytes).0.len();
                    }
                }
                let _ = std::fs::remove_dir_all(entry.path());
            }
            if lost > 0 {
                tracing::error!(
                    records = lost,
                    "request records spilled by an instance that was killed before writing them are lost (an instance without storage.journal_dir keeps them only while it runs)"
                );
            }
            lost
        }
        #[cfg(not(target_os = "linux"))]
        {
            let _ = temporary;
            0
        }
    }

    /// Whether every record is written ahead (else only spilled ones).
    pub fn is_write_ahead(&self) -> bool {
        self.write_ahead
    }

    async fn open_sized(
        directory: &Path,
        store: &dyn Store,
        sizes: Sizes,
    ) -> Result<(Journal, usize), StoreError> {
        std::fs::create_dir_all(directory).map_err(|error| io_error(directory, error))?;
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(directory.join("journal.lock"))
            .map_err(|error| io_error(directory, error))?;
        if lock.try_lock().is_err() {
            return Err(StoreError::Open {
                location: directory.display().to_string(),
                message: "another running instance uses this request journal; give each instance its own storage.journal_dir".to_owned(),
            });
        }
        let left = segments(directory)?;
        let mut recovered = 0;
        for (_, path) in &left {
            let bytes = std::fs::read(path).map_err(|error| io_error(directory, error))?;
            // A segment left by a killed process ends in the zeros of its
            // reserved space (after a crash of the machine, zeros may even
            // stand between records); a record cut short was being written
            // when the process died: its response never completed.
            let records = if path
                .extension()
                .is_some_and(|extension| extension == "jsonl")
            {
                frame::json_lines(&bytes)
            } else {
                let (records, unread) = frame::records(&bytes);
                if unread > 0 {
                    tracing::warn!(
                        segment = %path.display(),
                        unread,
                        "the end of a request journal segment is not a whole record (the process died while writing it); the rest of the segment is skipped"
                    );
                }
                records
            };
            for chunk in records.chunks(512) {
                recovered += store.insert_missing_records(chunk).await?;
            }
        }
        for (_, path) in &left {
            let _ = std::fs::remove_file(path);
        }
        if recovered > 0 {
            tracing::warn!(
                recovered,
                "request records recovered from the journal of a previous run"
            );
        }
        let segment = left.last().map_or(1, |(last, _)| last + 1);
        let open = Open::create(
            &segment_path(directory, segment),
            sizes.segment,
            sizes.map,
            sizes.window,
            true,
        )
        .map_err(|error| io_error(directory, error))?;
        let keeper = Keeper::new(directory.to_owned(), sizes);
        keeper.start();
        Ok((
            Journal {
                directory: directory.to_owned(),
                sizes,
                write_ahead: true,
                spills: true,
                state: Mutex::new(State::new(Some(open), segment, false)),
                queued: Notify::new(),
                keeper,
                _lock: Some(lock),
            },
            recovered,
        ))
    }

    /// A record as the journal keeps it: one frame (`frame::encode`).
    pub fn entry(record: &RequestRecord) -> Vec<u8> {
        frame::encode(record)
    }

    /// Appends `record`, whose entry is `line`, and puts it on the queue,
    /// in the order of their numbers. A record the queue cannot take stays
    /// in the journal, noted for the writer to read back; it is lost only
    /// if the journal cannot be written either.
    pub fn append(&self, line: &[u8], record: RequestRecord) -> Appended {
        let mut state = self.lock();
        let number = state.next;
        state.next += 1;
        let place = self.write(&mut state, number, line);
        let size = footprint(&record);
        let appended = match state.refusal(size) {
            None => {
                state.push(number, record, size);
                Appended::Queued
            }
            Some(reason) => state.note_overflow(number, place, line.len(), reason),
        };
        self.finish_append(state, appended)
    }

    /// Puts `record` on the queue; if the queue cannot take it, writes it
    /// to the spill file (when this is one and the writer still runs).
    pub fn spill_append(&self, record: RequestRecord) -> Appended {
        let mut state = self.lock();
        let number = state.next;
        state.next += 1;
        let size = footprint(&record);
        let appended = match state.refusal(size) {
            None => {
                state.push(number, record, size);
                Appended::Queued
            }
            // Nothing would read it back.
            Some(reason) if !self.spills || !state.accepting => Appended::Lost(reason),
            Some(reason) => {
                let line = Self::entry(&record);
                // Bounded: the temporary directory may be in memory.
                let held = state.closed.len() as u64 * self.sizes.segment + state.bytes;
                if held + line.len() as u64 > SPILL_BYTES {
                    Appended::Lost("the spill file is full")
                } else {
                    let place = self.write(&mut state, number, &line);
                    state.note_overflow(number, place, line.len(), reason)
                }
            }
        };
        self.finish_append(state, appended)
    }

    /// Lets segments go, then the lock, then wakes the writer if the
    /// record was the first on the queue.
    fn finish_append(
        &self,
        mut state: std::sync::MutexGuard<'_, State>,
        appended: Appended,
    ) -> Appended {
        let first = state.queue.len() == 1 && appended == Appended::Queued;
        self.release(&mut state);
        drop(state);
        if first {
            self.queued.notify_one();
        }
        appended
    }

    /// Sets the queue's bounds: records, and bytes (see `footprint`).
    pub fn bound_queue(&self, capacity: usize, byte_limit: usize) {
        let mut state = self.lock();
        state.capacity = capacity.max(1);
        state.byte_limit = byte_limit;
    }

    /// Moves every queued record, and their numbers, into `records` and
    /// `numbers` (which must be empty): a swap, so the lock is held for
    /// no longer than that. Their bytes count as being written until
    /// `written` is told.
    pub(crate) fn take_queued(&self, records: &mut Vec<RequestRecord>, numbers: &mut Vec<u64>) {
        let mut state = self.lock();
        std::mem::swap(&mut state.queue, records);
        std::mem::swap(&mut state.numbers, numbers);
        state.writing_bytes += state.queued_bytes;
        state.queued_bytes = 0;
    }

    /// The writer is done with records holding `bytes` (`footprint`).
    pub(crate) fn written(&self, bytes: usize) {
        let mut state = self.lock();
        state.writing_bytes = state.writing_bytes.saturating_sub(bytes);
    }

    /// Records on the queue.
    pub(crate) fn queued_len(&self) -> usize {
        self.lock().queue.len()
    }

    /// Waits until a record is queued (or was, since the last wait).
    pub(crate) async fn queued(&self) {
        self.queued.notified().await;
    }

    /// The writer has stopped: the queue takes nothing more (a write-ahead
    /// journal keeps what comes later for the next start).
    pub(crate) fn stop_queue(&self) {
        self.lock().accepting = false;
    }

    /// Makes the queue take records again, or refuse them, as if the
    /// writer had stopped.
    #[cfg(test)]
    fn accept(&self, accepting: bool) {
        self.lock().accepting = accepting;
    }

    /// Records waiting for the writer: queued, or in the journal.
    pub fn backlog(&self) -> usize {
        let state = self.lock();
        state.queue.len() + state.overflow.len()
    }

    /// The memory the records waiting for the writer hold, as the queue's
    /// bound counts it.
    pub fn held_bytes(&self) -> usize {
        let state = self.lock();
        state.queued_bytes + state.writing_bytes
    }

    /// Writes record `number`'s line at the end of the current segment
    /// (beginning the next when it would not fit); returns where, or
    /// `None` when the journal cannot be written.
    fn write(&self, state: &mut State, number: u64, line: &[u8]) -> Option<(u64, u64)> {
        let len = line.len() as u64;
        if state.unopened {
            state.unopened = false;
            let created = private_directory(&self.directory).and_then(|()| {
                Open::create(
                    &segment_path(&self.directory, state.segment),
                    self.sizes.segment,
                    self.sizes.map,
                    self.sizes.window,
                    false,
                )
            });
            match created {
                Ok(open) => state.open = Some(open),
                Err(error) => self.break_off(state, &error),
            }
        }
        if state
            .open
            .as_ref()
            .is_some_and(|open| state.bytes + len > open.capacity)
        {
            self.begin_segment(state, number, len);
        }
        let (segment, offset) = (state.segment, state.bytes);
        let window = self.sizes.window;
        let open = state.open.as_mut()?;
        match open.put(offset, line, window, &self.keeper) {
            Ok(()) => {
                let capacity = open.capacity;
                state.bytes += len;
                // Half full: the next segment is made ahead, off the
                // request path, under a number of its own.
                if !state.asked && state.bytes.saturating_mul(2) >= capacity {
                    state.asked = true;
                    self.keeper.want(state.next_segment);
                    state.next_segment += 1;
                }
                Some((segment, offset))
            }
            Err(error) => {
                self.break_off(state, &error);
                None
            }
        }
    }

    /// Closes the current segment, whose last record is `number - 1`, and
    /// opens the next with room for at least `len` bytes: the one made
    /// ahead, if it is ready, or else one made here (a segment with nothing
    /// in it yet is not closed: it grows instead).
    fn begin_segment(&self, state: &mut State, number: u64, len: u64) {
        let Some(open) = state.open.take() else {
            return;
        };
        let capacity = self.sizes.segment.max(len);
        let next = if state.bytes == 0 {
            let mut open = open;
            open.grow(capacity);
            Ok(open)
        } else {
            // A window asked ahead of this segment is not wanted any more
            // (and is unmapped before the segment is cut).
            self.keeper.cancel_window();
            self.keeper.finish(open, state.bytes);
            state.closed.push(Segment {
                number: state.segment,
                last: number - 1,
            });
            state.bytes = 0;
            state.asked = false;
            match self.keeper.take() {
                Some((made, mut open)) => {
                    state.segment = made;
                    if open.capacity < capacity {
                        open.grow(capacity);
                    }
                    Ok(open)
                }
                None => {
                    // Not ready (or never asked for): made here, under a
                    // number of its own (one asked for is given up).
                    state.made_here += 1;
                    state.segment = state.next_segment;
                    state.next_segment += 1;
                    Open::create(
                        &segment_path(&self.directory, state.segment),
                        capacity,
                        self.sizes.map,
                        self.sizes.window,
                        false,
                    )
                }
            }
        };
        match next {
            Ok(open) => state.open = Some(open),
            Err(error) => self.break_off(state, &error),
        }
    }

    /// Writing failed: logged once, and the journal is off from then on.
    fn break_off(&self, state: &mut State, error: &std::io::Error) {
        state.open = None;
        tracing::error!(%error, directory = %self.directory.display(), "the request journal cannot be written; records now depend on the database alone");
    }

    /// Every record up to `number` is in the database.
    pub fn committed(&self, number: u64) {
        let mut state = self.lock();
        state.committed = state.committed.max(number);
        self.release(&mut state);
    }

    /// Whether records wait in the journal for the writer.
    pub fn has_overflow(&self) -> bool {
        !self.lock().overflow.is_empty()
    }

    /// Up to `limit` of the oldest records the queue could not take, and
    /// lines of at most `bytes` together (at least one), read back from the
    /// journal, with their numbers. They stay noted until
    /// `overflow_written`. Only the record writer calls this.
    pub fn read_overflow(&self, limit: usize, bytes: usize) -> Vec<(u64, RequestRecord)> {
        let pending: Vec<Overflow> = {
            let state = self.lock();
            let mut total = 0;
            state
                .overflow
                .iter()
                .take(limit)
                .take_while(|entry| {
                    let fits = total == 0 || total + entry.len <= bytes;
                    total += entry.len;
                    fits
                })
                .copied()
                .collect()
        };
        let mut records = Vec::with_capacity(pending.len());
        let mut open: Option<(u64, File)> = None;
        for entry in pending {
            if open
                .as_ref()
                .is_none_or(|(segment, _)| *segment != entry.segment)
            {
                match File::open(segment_path(&self.directory, entry.segment)) {
                    Ok(file) => open = Some((entry.segment, file)),
                    Err(error) => {
                        tracing::error!(%error, "a spilled request record cannot be read back from the journal");
                        break;
                    }
                }
            }
            let Some((_, file)) = open.as_mut() else {
                break;
            };
            let mut line = vec![0; entry.len];
            let read = file
                .seek(SeekFrom::Start(entry.offset))
                .and_then(|_| file.read_exact(&mut line));
            match read.map(|()| frame::decode(&line)) {
                Ok(Some(record)) => records.push((entry.number, record)),
                _ => {
                    tracing::error!(
                        "a spilled request record cannot be read back from the journal"
                    );
                    break;
                }
            }
        }
        records
    }

    /// The spilled records up to `number` are in the database.
    pub fn overflow_written(&self, number: u64) {
        let mut state = self.lock();
        while state
            .overflow
            .front()
            .is_some_and(|entry| entry.number <= number)
        {
            state.overflow.pop_front();
        }
        self.release(&mut state);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Deletes the closed segments wholly committed and not pinned.
    fn release(&self, state: &mut State) {
        let committed = state.committed;
        let pinned = state
            .overflow
            .front()
            .map_or(u64::MAX, |entry| entry.number);
        let keeper = &self.keeper;
        state.closed.retain(|segment| {
            let done = segment.last <= committed && segment.last < pinned;
            if done {
                keeper.remove(segment.number);
            }
            !done
        });
    }

    /// Removes the journal after a clean shutdown that committed every
    /// record; anything uncommitted stays for the next start.
    /// Returns how many spilled records a spill file loses (it is removed
    /// whatever it holds: nothing would read it again).
    pub fn close(&self) -> usize {
        let mut state = self.lock();
        // Its chores done (segments cut to length, committed ones
        // removed), and one made ahead removed.
        self.keeper.stop();
        if !self.write_ahead {
            let lost = state.overflow.len();
            state.overflow.clear();
            // Records that come later are counted as dropped.
            state.unopened = false;
            if let Some(open) = state.open.take() {
                open.finish(0);
                let _ = std::fs::remove_dir_all(&self.directory);
            }
            return lost;
        }
        // Queued records are written in order, spilled ones from the
        // journal: all are in when the queue's last is and nothing waits.
        // Otherwise (or when broken) the segments stay for the next start,
        // the current one still open to any record that comes late.
        let done = state.overflow.is_empty() && state.committed >= state.last_queued;
        if !done {
            return 0;
        }
        let Some(open) = state.open.take() else {
            return 0;
        };
        open.finish(state.bytes);
        for segment in &state.closed {
            let _ = std::fs::remove_file(segment_path(&self.directory, segment.number));
        }
        let _ = std::fs::remove_file(segment_path(&self.directory, state.segment));
        0
    }
}

#[cfg(test)]
pub(crate) mod tests_support {
    use std::sync::atomic::{AtomicU64, Ordering};

    use switchboard_core::RequestRecord;

    /// A number no other caller in this process gets.
    pub fn unique() -> u64 {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        NEXT.fetch_add(1, Ordering::Relaxed)
    }

    /// A plain record whose id and start time come from `index`.
    pub fn record(index: usize) -> RequestRecord {
        RequestRecord {
            request_id: format!("r{index}"),
            started_at_ms: index as i64,
            endpoint: switchboard_core::Endpoint::ChatCompletions,
            model: "m".into(),
            deployment: None,
            served_model: None,
            attempts: 1,
            attempt_details: Vec::new(),
            stream: false,
            status: 200,
            outcome: switchboard_core::Outcome::Success,
            error_code: None,
            latency_ms: 1,
            ttft_ms: None,
            usage: Default::default(),
            key_id: None,
            team_id: None,
            end_user: None,
            cost_nanos: None,
            cache_hit: false,
            metadata: None,
            bodies: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use switchboard_core::{Endpoint, Outcome, Usage};

    use super::*;

    /// Records written through small windows and segments (mapped, and
    /// written plainly), with lines crossing windows, a first record larger
    /// than a segment (which grows), one that fills a segment exactly, a
    /// large one later, and some the queue refused, are read back as
    /// spilled records; segments wholly committed are deleted, the others
    /// kept; and after a crash (the journal dropped unclosed, its open
    /// segment ending in reserved zeros) the next open replays every record
    /// not deleted exactly once.
    #[tokio::test]
    async fn records_cross_windows_and_segments_and_replay_after_a_crash() {
        for map in [true, false] {
            let directory = std::env::temp_dir().join(format!(
                "switchboard-journal-{}-{}",
                std::process::id(),
                tests_support::unique()
            ));
            let sizes = Sizes {
                segment: 2 * 1024,
                window: 300,
                map,
            };
            let store = crate::SqliteStore::open_memory().await.unwrap();
            let (journal, recovered) = Journal::open_sized(&directory, &store, sizes)
                .await
                .unwrap();
            assert_eq!(recovered, 0);
            let body = |record: &mut RequestRecord, len: usize| {
                record.bodies = Some(switchboard_core::Bodies {
                    request: "x".repeat(len),
                    response: None,
                });
            };
            let mut records: Vec<RequestRecord> = (0..200).map(tests_support::record).collect();
            // Larger than a segment, first: the empty segment grows.
            body(&mut records[0], 40_000);
            body(&mut records[150], 30_000);
            // Record 100 fills what is left of its segment exactly.
            let mut lines: Vec<Vec<u8>> = records.iter().map(Journal::entry).collect();
            let used: u64 = lines[1..100].iter().map(|line| line.len() as u64).sum();
            let in_segment = {
                // The bytes of the segment record 100 lands in, before it.
                let mut bytes = 0;
                for line in &lines[1..100] {
                    if bytes + line.len() as u64 > sizes.segment {
                        bytes = 0;
                    }
                    bytes += line.len() as u64;
                }
                bytes
            };
            assert!(used > in_segment);
            // The body's length is a varint: a longer body may take one
            // byte more to say how long it is.
            let target = (sizes.segment - in_segment) as usize;
            let mut len = target - Journal::entry(&records[100]).len();
            loop {
                body(&mut records[100], len);
                let size = Journal::entry(&records[100]).len();
                if size <= target {
                    break;
                }
                len -= size - target;
            }
            lines[100] = Journal::entry(&records[100]);
            assert_eq!(in_segment + lines[100].len() as u64, sizes.segment);
            for (index, line) in lines.iter().enumerate() {
                // Every third record (the large 150 among them) is refused by
                // the queue: it spills.
                journal.accept(index % 3 != 0);
                let appended = journal.append(line, records[index].clone());
                assert_eq!(
                    appended == Appended::Queued,
                    index % 3 != 0,
                    "{index}: {appended:?}"
                );
            }
            let spilled = journal.read_overflow(usize::MAX, usize::MAX);
            let expected: Vec<(u64, &RequestRecord)> = records
                .iter()
                .enumerate()
                .step_by(3)
                .map(|(index, record)| (index as u64 + 1, record))
                .collect();
            assert_eq!(spilled.len(), expected.len());
            for ((number, back), (expected_number, record)) in spilled.iter().zip(&expected) {
                assert_eq!(number, expected_number);
                assert_eq!(back, *record);
            }
            // The keeper has cut the closed segments to their length.
            journal.keeper.settle();
            let files: Vec<u64> = segments(&directory)
                .unwrap()
                .into_iter()
                .map(|(number, _)| number)
                .collect();
            assert!(files.len() > 3, "{files:?}");
            let closed: Vec<u64> = journal
                .lock()
                .closed
                .iter()
                .map(|segment| segment.number)
                .collect();
            assert!(closed.len() > 2, "{closed:?}");
            // Closed segments were cut to their length: their records'
            // entries, one after the other, and nothing else.
            for number in &closed {
                let text = std::fs::read(segment_path(&directory, *number)).unwrap();
                let entries: Vec<u8> = frame::records(&text)
                    .0
                    .iter()
                    .flat_map(Journal::entry)
                    .collect();
                assert_eq!(text, entries);
            }
            // Record 101 filled its segment to the byte, and the next
            // record began a new one.
            assert!(files.iter().any(|number| {
                let text = std::fs::read(segment_path(&directory, *number)).unwrap();
                text.len() as u64 == sizes.segment && text.ends_with(&lines[100])
            }));
            // The first segment holds record 1 alone (it grew for it).
            let first = std::fs::read(segment_path(&directory, files[0])).unwrap();
            assert_eq!(first, lines[0]);
            // Records 1 to 60 are committed, and the spilled ones written
            // up to there: the segments holding only those go.
            journal.committed(60);
            journal.overflow_written(60);
            journal.keeper.settle();
            let kept = segments(&directory).unwrap();
            assert!(kept.len() < files.len(), "{kept:?}");
            let mut left = 0;
            for (_, path) in &kept {
                left += frame::records(&std::fs::read(path).unwrap()).0.len();
            }
            assert!(left >= 140, "{left} records left, 140 not committed");
            let first_left = 200 - left;
            drop(journal);

            let store = crate::SqliteStore::open_memory().await.unwrap();
            let (journal, recovered) = Journal::open_sized(&directory, &store, sizes)
                .await
                .unwrap();
            assert_eq!(recovered, left);
            let mut rows = store.recent_records(1_000).await.unwrap();
            rows.sort_by_key(|row| row.started_at_ms);
            let ids: Vec<&str> = rows.iter().map(|row| row.request_id.as_str()).collect();
            let expected: Vec<&str> = records[first_left..]
                .iter()
                .map(|record| record.request_id.as_str())
                .collect();
            assert_eq!(ids, expected);
            assert_eq!(
                store.record_bodies("r150").await.unwrap()[0]
                    .1
                    .request
                    .len(),
                30_000
            );
            // The old segments are gone; a clean close removes the new one.
            journal.close();
            assert!(segments(&directory).unwrap().is_empty());
            drop(journal);
            let _ = std::fs::remove_dir_all(&directory);
        }
    }

    /// A fresh directory for a test's journal.
    fn test_directory(name: &str) -> PathBuf {
        std::env::temp_dir().join(format!(
            "switchboard-{name}-{}-{}",
            std::process::id(),
            tests_support::unique()
        ))
    }

    /// Small segments and windows, mapped where the filesystem allows.
    const SMALL: Sizes = Sizes {
        segment: 1024,
        window: 256,
        map: true,
    };

    /// Appends record `next` (counting it), which the queue takes.
    fn append_next(journal: &Journal, records: &[RequestRecord], next: &mut usize) {
        let record = &records[*next];
        assert_eq!(
            journal.append(&Journal::entry(record), record.clone()),
            Appended::Queued
        );
        *next += 1;
    }

    /// Waits (at most 20 s) for `done`.
    fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while !done() {
            assert!(
                std::time::Instant::now() < deadline,
                "waited 20 s for {what}"
            );
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
    }

    /// What a process killed now would leave: the segment files as they
    /// are, copied to a directory of their own, replayed into a fresh
    /// database. Every record appended is found once, both in the files
    /// (no frame twice) and in the database.
    async fn replay_a_copy(directory: &Path, appended: &[RequestRecord]) {
        let copy = test_directory("journal-copy");
        std::fs::create_dir_all(&copy).unwrap();
        let mut frames = 0;
        for (number, path) in segments(directory).unwrap() {
            let bytes = std::fs::read(&path).unwrap();
            frames += frame::records(&bytes).0.len();
            std::fs::write(segment_path(&copy, number), bytes).unwrap();
        }
        assert_eq!(frames, appended.len());
        let store = crate::SqliteStore::open_memory().await.unwrap();
        let (journal, recovered) = Journal::open_sized(&copy, &store, SMALL).await.unwrap();
        assert_eq!(recovered, appended.len());
        let mut rows = store.recent_records(10_000).await.unwrap();
        rows.sort_by_key(|row| row.started_at_ms);
        let ids: Vec<&str> = rows.iter().map(|row| row.request_id.as_str()).collect();
        let expected: Vec<&str> = appended
            .iter()
            .map(|record| record.request_id.as_str())
            .collect();
        assert_eq!(ids, expected);
        journal.close();
        drop(journal);
        let _ = std::fs::remove_dir_all(&copy);
    }

    /// With the keeper keeping up, every segment after the first is made
    /// ahead (none by an append), the windows after a segment's first
    /// mapped ahead, and every closed one cut to its length, off the
    /// request path. A segment not ready at the switch is given up,
    /// whether the keeper had not begun it or had made it already: the
    /// append makes one under the next number, and the one given up is
    /// never used and never left behind. What a crash would leave, with a
    /// segment made ahead and unused, or one closed and not yet cut, and
    /// gaps in numbering, replays every record once.
    #[tokio::test]
    async fn segments_are_made_ahead_and_one_not_ready_is_given_up() {
        let directory = test_directory("ahead");
        let store = crate::SqliteStore::open_memory().await.unwrap();
        let (journal, _) = Journal::open_sized(&directory, &store, SMALL)
            .await
            .unwrap();
        let mapped = matches!(
            journal.lock().open.as_ref().map(|open| &open.mode),
            Some(Mode::Mapped(_))
        );
        let records: Vec<RequestRecord> = (0..600).map(tests_support::record).collect();
        let mut next = 0;
        let segment = |journal: &Journal| journal.lock().segment;
        // Three switches, the keeper done with its chores after each append.
        while journal.lock().closed.len() < 3 {
            append_next(&journal, &records, &mut next);
            journal.keeper.settle();
        }
        let closed: Vec<u64> = journal.lock().closed.iter().map(|s| s.number).collect();
        assert_eq!(closed, [1, 2, 3]);
        assert_eq!(segment(&journal), 4);
        assert_eq!(journal.lock().made_here, 0);
        let (made, windows) = journal.keeper.made_count();
        assert_eq!(made, 3);
        if mapped {
            // Each segment of four windows: the three after the first are
            // mapped ahead.
            assert_eq!(windows, 9);
        }
        for number in &closed {
            let text = std::fs::read(segment_path(&directory, *number)).unwrap();
            let (found, unread) = frame::records(&text);
            assert_eq!(unread, 0);
            let entries: Vec<u8> = found.iter().flat_map(Journal::entry).collect();
            assert_eq!(text, entries, "segment {number} is cut to its records");
        }

        // The keeper held back before it begins segment 5: the append that
        // fills segment 4 makes segment 6 itself, and 5 is never made.
        journal.keeper.pause(true);
        while segment(&journal) == 4 {
            append_next(&journal, &records, &mut next);
        }
        assert_eq!(segment(&journal), 6);
        assert_eq!(journal.lock().made_here, 1);
        journal.keeper.pause(false);
        journal.keeper.settle();
        assert_eq!(journal.keeper.made_count().0, 3);
        assert!(!segment_path(&directory, 5).exists());

        // The keeper made segment 7 and is held back from handing it over:
        // the append that fills segment 6 gives it up and makes segment 8,
        // and the keeper then removes 7.
        journal.keeper.hold_made(true);
        while !journal.lock().asked {
            append_next(&journal, &records, &mut next);
        }
        wait_for("segment 7 to be made", || {
            journal.keeper.holding().is_some()
        });
        assert_eq!(journal.keeper.holding(), Some(7));
        assert!(segment_path(&directory, 7).exists());
        while segment(&journal) == 6 {
            append_next(&journal, &records, &mut next);
        }
        assert_eq!(segment(&journal), 8);
        assert_eq!(journal.lock().made_here, 2);
        journal.keeper.hold_made(false);
        journal.keeper.settle();
        assert_eq!(journal.keeper.made_count().0, 3);
        assert!(!segment_path(&directory, 7).exists());

        // Ahead again, up to segment 10 made and unused.
        while segment(&journal) == 8 || !journal.lock().asked {
            append_next(&journal, &records, &mut next);
            journal.keeper.settle();
        }
        assert_eq!(segment(&journal), 9);
        assert_eq!(journal.lock().made_here, 2);
        assert!(segment_path(&directory, 10).exists());
        replay_a_copy(&directory, &records[..next]).await;

        // Segment 9 closed and not cut yet (the keeper held back).
        journal.keeper.pause(true);
        while segment(&journal) == 9 {
            append_next(&journal, &records, &mut next);
        }
        assert_eq!(segment(&journal), 10);
        if mapped {
            let len = std::fs::metadata(segment_path(&directory, 9))
                .unwrap()
                .len();
            assert_eq!(len, SMALL.segment, "not cut yet");
        }
        replay_a_copy(&directory, &records[..next]).await;
        journal.keeper.pause(false);
        drop(journal);

        let files: Vec<u64> = segments(&directory)
            .unwrap()
            .into_iter()
            .map(|(number, _)| number)
            .collect();
        assert_eq!(files, [1, 2, 3, 4, 6, 8, 9, 10]);
        let store = crate::SqliteStore::open_memory().await.unwrap();
        let (journal, recovered) = Journal::open_sized(&directory, &store, SMALL)
            .await
            .unwrap();
        assert_eq!(recovered, next);
        journal.close();
        assert!(segments(&directory).unwrap().is_empty());
        drop(journal);
        let _ = std::fs::remove_dir_all(&directory);
    }

    /// A clean close leaves no segment behind, whether one is made ahead
    /// and ready or made and held back from being handed over. A close
    /// before every record is committed keeps the journal, and records
    /// that come after it, across windows and segments (the keeper gone,
    /// its chores done where they arise), are kept too and replayed.
    #[tokio::test]
    async fn a_clean_close_leaves_nothing_and_late_records_are_kept() {
        let records: Vec<RequestRecord> = (0..200).map(tests_support::record).collect();
        for hold in [false, true] {
            let directory = test_directory("close");
            let store = crate::SqliteStore::open_memory().await.unwrap();
            let (journal, _) = Journal::open_sized(&directory, &store, SMALL)
                .await
                .unwrap();
            journal.keeper.hold_made(hold);
            let mut next = 0;
            while !journal.lock().asked {
                append_next(&journal, &records, &mut next);
            }
            if hold {
                wait_for("segment 2 to be made", || {
                    journal.keeper.holding() == Some(2)
                });
            } else {
                journal.keeper.settle();
                assert_eq!(journal.keeper.chores_made(), Some(2));
            }
            assert!(segment_path(&directory, 2).exists());
            journal.committed(next as u64);
            journal.close();
            assert!(segments(&directory).unwrap().is_empty(), "hold: {hold}");
            drop(journal);
            let _ = std::fs::remove_dir_all(&directory);
        }

        let directory = test_directory("late");
        let store = crate::SqliteStore::open_memory().await.unwrap();
        let (journal, _) = Journal::open_sized(&directory, &store, SMALL)
            .await
            .unwrap();
        let mut next = 0;
        for _ in 0..10 {
            append_next(&journal, &records, &mut next);
        }
        // Not all committed: the journal stays.
        journal.committed(5);
        journal.close();
        assert!(!segments(&directory).unwrap().is_empty());
        // Late records, across windows and two segments.
        while journal.lock().closed.len() < 2 {
            append_next(&journal, &records, &mut next);
        }
        for _ in 0..10 {
            append_next(&journal, &records, &mut next);
        }
        drop(journal);
        let store = crate::SqliteStore::open_memory().await.unwrap();
        let (journal, recovered) = Journal::open_sized(&directory, &store, SMALL)
            .await
            .unwrap();
        assert_eq!(recovered, next);
        journal.close();
        drop(journal);
        let _ = std::fs::remove_dir_all(&directory);
    }

    /// Replay reads every whole line, whatever surrounds it: a segment of an
    /// earlier build (no zeros), a line cut short by the process's death,
    /// and zeros between lines.
    #[tokio::test]
    async fn replay_reads_whole_records_around_zeros_and_a_cut_one() {
        let directory = std::env::temp_dir().join(format!(
            "switchboard-replay-{}-{}",
            std::process::id(),
            tests_support::unique()
        ));
        std::fs::create_dir_all(&directory).unwrap();
        let entry = |index| Journal::entry(&tests_support::record(index));
        // A segment of an earlier version: JSON lines.
        let json = |index| {
            let mut line = serde_json::to_vec(&tests_support::record(index)).unwrap();
            line.push(b'\n');
            line
        };
        std::fs::write(
            directory.join("records-000000000001.jsonl"),
            [json(0), json(1)].concat(),
        )
        .unwrap();
        std::fs::write(segment_path(&directory, 2), [entry(2), entry(3)].concat()).unwrap();
        // Zeros between records (a crash of the machine), and one cut
        // short before the reserved zeros.
        let mut mapped = entry(4);
        mapped.extend_from_slice(&[0; 4096]);
        mapped.extend_from_slice(&entry(5));
        mapped.extend_from_slice(&entry(8)[..20]);
        mapped.extend_from_slice(&[0; 100]);
        std::fs::write(segment_path(&directory, 3), mapped).unwrap();
        // A record torn (one byte changed): reading stops there.
        let mut torn = entry(6);
        torn[12] ^= 0x20;
        std::fs::write(segment_path(&directory, 4), [torn, entry(7)].concat()).unwrap();
        // A record cut short whose body holds what looks like a record (a
        // frame, and a JSON line): neither is taken for one.
        let mut carrier = tests_support::record(9);
        let inner = String::from_utf8(json(10)).unwrap();
        carrier.bodies = Some(switchboard_core::Bodies {
            request: format!("\n{inner}"),
            response: None,
        });
        let carried = Journal::entry(&carrier);
        let mut cut = carried[..carried.len() - 3].to_vec();
        cut.extend_from_slice(&[0; 64]);
        std::fs::write(segment_path(&directory, 5), cut).unwrap();
        let store = crate::SqliteStore::open_memory().await.unwrap();
        let (journal, recovered) = Journal::open(&directory, &store).await.unwrap();
        assert_eq!(recovered, 6);
        let mut ids: Vec<String> = store
            .recent_records(10)
            .await
            .unwrap()
            .into_iter()
            .map(|row| row.request_id)
            .collect();
        ids.sort();
        assert_eq!(ids, ["r0", "r1", "r2", "r3", "r4", "r5"]);
        // Every segment was replayed and removed; the new one is this
        // version's.
        let left: Vec<PathBuf> = segments(&directory)
            .unwrap()
            .into_iter()
            .map(|(_, path)| path)
            .collect();
        assert_eq!(left, [segment_path(&directory, 6)]);
        journal.close();
        drop(journal);
        let _ = std::fs::remove_dir_all(&directory);
    }

    /// The spill directories of killed instances are removed and their
    /// records counted; those of running processes (this one included)
    /// and anything else are left alone.
    #[cfg(target_os = "linux")]
    #[test]
    fn abandoned_spill_files_are_cleared_and_counted() {
        let temporary = std::env::temp_dir().join(format!(
            "switchboard-abandoned-{}-{}",
            std::process::id(),
            tests_support::unique()
        ));
        std::fs::create_dir_all(&temporary).unwrap();
        let mut child = std::process::Command::new("true").spawn().unwrap();
        child.wait().unwrap();
        let dead = child.id();
        let make = |name: String, records: usize| {
            let directory = temporary.join(name);
            std::fs::create_dir(&directory).unwrap();
            let entries: Vec<u8> = (0..records)
                .flat_map(|index| Journal::entry(&tests_support::record(index)))
                .collect();
            std::fs::write(segment_path(&directory, 1), entries).unwrap();
            directory
        };
        let abandoned = make(format!("switchboard-spill-{dead}-00ab"), 3);
        let ours = make(format!("switchboard-spill-{}-00cd", std::process::id()), 2);
        let running = make("switchboard-spill-1-00ef".to_owned(), 2);
        let other = make("something-else".to_owned(), 2);
        assert_eq!(Journal::clear_abandoned_spills(&temporary), 3);
        assert!(!abandoned.exists());
        assert!(ours.exists() && running.exists() && other.exists());
        assert_eq!(Journal::clear_abandoned_spills(&temporary), 0);
        std::fs::remove_dir_all(&temporary).unwrap();
    }

    /// An entry reads back as exactly its record, with every field set or
    /// unset, extreme numbers and any text; an entry cut anywhere, or with
    /// any byte changed, reads back as nothing.
    #[test]
    fn entries_read_back_exactly_and_damaged_ones_not_at_all() {
        let plain = RequestRecord {
            request_id: "req_01a2253f883f226ea7fc70aac97ba2be".to_owned(),
            started_at_ms: 1_795_921_250_367,
            endpoint: Endpoint::ChatCompletions,
            model: "bench-model".to_owned(),
            deployment: None,
            served_model: None,
            attempts: 0,
            attempt_details: Vec::new(),
            stream: false,
            status: 499,
            outcome: Outcome::ClientClosed,
            error_code: None,
            latency_ms: 0,
            ttft_ms: None,
            usage: Usage::default(),
            key_id: None,
            team_id: None,
            end_user: None,
            cost_nanos: None,
            cache_hit: false,
            metadata: None,
            bodies: None,
        };
        let full = RequestRecord {
            request_id: "client \"id\" with \\ and \u{1} and é and 🚀".to_owned(),
            started_at_ms: -5,
            endpoint: Endpoint::Messages,
            model: "claude\n\ttab".to_owned(),
            deployment: Some("primary".to_owned()),
            served_model: Some("m\u{7f}\u{1f}".to_owned()),
            attempts: 3,
            attempt_details: vec![switchboard_core::AttemptDetail {
                deployment: "primary".into(),
                model: "m\"q".into(),
                outcome: "timeout".into(),
                status: Some(504),
                duration_ms: 30_000,
            }],
            stream: true,
            status: 200,
            outcome: Outcome::Success,
            error_code: Some("rate_limited".to_owned()),
            latency_ms: u64::MAX,
            ttft_ms: Some(12),
            usage: Usage {
                input_tokens: Some(10),
                output_tokens: Some(5),
                cached_input_tokens: Some(2),
                reasoning_tokens: Some(1),
                cache_write_tokens: Some(4),
            },
            key_id: Some("key_1".into()),
            team_id: Some("team_1".into()),
            end_user: Some("user@example.com".to_owned()),
            cost_nanos: Some(20_850),
            cache_hit: true,
            metadata: Some("{\"tag\":\"a\\\"b\"}".to_owned()),
            bodies: Some(switchboard_core::Bodies {
                request: "{\"messages\":[]}".to_owned(),
                response: None,
            }),
        };
        let mut wide = full.clone();
        wide.started_at_ms = i64::MIN;
        wide.attempts = u32::MAX;
        wide.status = u16::MAX;
        wide.ttft_ms = Some(u64::MAX);
        wide.usage.input_tokens = Some(0);
        wide.cost_nanos = Some(u64::MAX);
        wide.attempt_details = (0..16)
            .map(|index| switchboard_core::AttemptDetail {
                deployment: format!("d{index}").into(),
                model: "m".into(),
                outcome: "ok".into(),
                status: (index % 2 == 0).then_some(200),
                duration_ms: index,
            })
            .collect();
        wide.bodies = Some(switchboard_core::Bodies {
            request: "q".repeat(70_000),
            response: Some("é".repeat(300)),
        });
        wide.endpoint = Endpoint::Embeddings;
        wide.outcome = Outcome::Shutdown;
        for record in [plain, full, wide] {
            let entry = Journal::entry(&record);
            assert_eq!(frame::decode(&entry).as_ref(), Some(&record));
            assert_eq!(frame::records(&entry), (vec![record.clone()], 0));
            // Smaller than the JSON of earlier versions.
            assert!(entry.len() < serde_json::to_vec(&record).unwrap().len());
            for cut in [1, 5, entry.len() / 2, entry.len() - 1] {
                assert_eq!(frame::decode(&entry[..cut]), None, "cut at {cut}");
                assert_eq!(frame::records(&entry[..cut]), (Vec::new(), cut));
            }
            for at in (0..entry.len()).step_by(7) {
                let mut damaged = entry.clone();
                damaged[at] ^= 0x01;
                assert_eq!(frame::decode(&damaged), None, "byte {at} changed");
            }
        }
    }

    /// JSON lines of journals written by earlier versions read back, even
    /// those written before `Usage` had a cache-write count (unknown).
    #[test]
    fn lines_without_a_cache_write_count_still_parse() {
        let record = RequestRecord {
            request_id: "req-1".to_owned(),
            started_at_ms: 1_700_000_000_000,
            endpoint: Endpoint::Messages,
            model: "m".to_owned(),
            deployment: None,
            served_model: None,
            attempts: 1,
            attempt_details: Vec::new(),
            stream: false,
            status: 200,
            outcome: Outcome::Success,
            error_code: None,
            latency_ms: 12,
            ttft_ms: None,
            usage: Usage {
                input_tokens: Some(10),
                output_tokens: Some(5),
                cached_input_tokens: None,
                reasoning_tokens: None,
                cache_write_tokens: Some(4),
            },
            key_id: None,
            team_id: None,
            end_user: None,
            cost_nanos: Some(1234),
            cache_hit: false,
            metadata: None,
            bodies: None,
        };
        let mut line = serde_json::to_vec(&record).unwrap();
        line.push(b'\n');
        assert_eq!(frame::json_lines(&line), std::slice::from_ref(&record));

        let mut old: serde_json::Value = serde_json::from_slice(&line).unwrap();
        let usage = old["usage"].as_object_mut().unwrap();
        assert!(usage.remove("cache_write_tokens").is_some());
        let mut line = serde_json::to_vec(&old).unwrap();
        line.push(b'\n');
        let back = frame::json_lines(&line);
        assert_eq!(back.len(), 1);
        assert_eq!(back[0].usage.cache_write_tokens, None);
        assert_eq!(back[0].usage.input_tokens, Some(10));
    }
}
