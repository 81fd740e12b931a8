//! Running the real `switchboard` binary in tests: start it on a loopback
//! port, find the address it logs, stop it with SIGTERM.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

pub fn binary() -> Command {
    Command::new(env!("CARGO_BIN_EXE_switchboard"))
}

/// A running gateway process. Killed if the test ends without stopping it.
pub struct Gateway {
    pub child: Option<Child>,
    pub base: String,
    /// Every line the process wrote to standard error so far.
    pub log: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl Gateway {
    /// Starts `switchboard serve` with `args` in `directory` and waits for
    /// its "listening" line.
    pub fn start(directory: &Path, args: &[&str], env: &[(&str, &str)]) -> Gateway {
        switchboard_testkit::install_crypto_provider();
        let mut command = binary();
        command
            .arg("serve")
            .args(args)
            .current_dir(directory)
            .env_remove("SWITCHBOARD_CONFIG")
            .env("SWITCHBOARD_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (name, value) in env {
            command.env(name, value);
        }
        let mut child = command.spawn().expect("the binary starts");
        let stderr = child.stderr.take().expect("piped stderr");
        let log = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let (address_sender, address_receiver) = mpsc::channel();
        let log_writer = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(rest) = line.split("listening on http://").nth(1) {
                    let address: String = rest
                        .chars()
                        .take_while(|character| !character.is_whitespace() && *character != '"')
                        .collect();
                    let _ = address_sender.send(address);
                }
                log_writer.lock().unwrap().push(line);
            }
        });
        let address = match address_receiver.recv_timeout(Duration::from_secs(30)) {
            Ok(address) => address,
            Err(_) => {
                let _ = child.kill();
                panic!("the gateway did not start: {:#?}", log.lock().unwrap());
            }
        };
        Gateway {
            child: Some(child),
            base: format!("http://{address}"),
            log,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Sends SIGTERM and waits for the exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("running");
        let status = Command::new("kill")
            .arg("-TERM")
            .arg(child.id().to_string())
            .status()
            .expect("kill runs");
        assert!(status.success());
        for _ in 0..300 {
            if let Some(status) = child.try_wait().expect("wait") {
                return status;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = child.kill();
        panic!("the gateway did not exit within 30 s of SIGTERM");
    }

    pub fn log_text(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A fresh, empty directory under the target's temporary directory.
pub fn scratch_dir(name: &str) -> std::path::PathBuf {
    let directory =
        Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&directory);
    std::fs::create_dir_all(&directory).unwrap();
    directory
}
