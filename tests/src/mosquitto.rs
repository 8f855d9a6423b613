//! A real Mosquitto broker for tests: each [`Broker`] runs on its own 127.0.0.1 port with its
//! own config file, its log (stderr, unbuffered) is read to wait for events such as "a client
//! subscribed", and it is killed by PID when dropped. Publishers: `mosquitto_pub` and a
//! paho-mqtt script shaped like a typical Raspberry Pi sensor script
//! (`tests/scripts/mqtt_publish.py`).
//!
//! Needs `mosquitto`, `mosquitto_pub` (Debian: `apt-get install -y mosquitto mosquitto-clients`)
//! and `python3` with paho-mqtt 2.x (`pip install paho-mqtt`); a missing one fails the test with
//! a message saying so. `MOSQUITTO`, `MOSQUITTO_PUB` and `PYTHON` override where they are looked
//! for. Helpers here panic (with what failed): they only run inside tests.

use crate::workspace_root;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::process::Command;
use tokio::sync::mpsc;

/// How long any one expected event may take.
pub const DEADLINE: Duration = Duration::from_secs(30);
pub const TEMPERATURE_TOPIC: &str = "devsecops/sensors/temperature";

/// Runs `future` or fails the test, naming what did not happen.
pub async fn within_deadline<T>(what: &str, future: impl Future<Output = T>) -> T {
    match tokio::time::timeout(DEADLINE, future).await {
        Ok(value) => value,
        Err(_) => panic!("timed out after {DEADLINE:?} waiting for {what}"),
    }
}

/// Finds a program: `$env_var`, then `PATH`, then `extra_dirs`; fails with an install hint.
pub fn program(name: &str, env_var: &str, extra_dirs: &[&str], hint: &str) -> PathBuf {
    if let Some(path) = std::env::var_os(env_var) {
        let path = PathBuf::from(path);
        assert!(
            path.is_file(),
            "${env_var} is {}, which is no file ({hint})",
            path.display()
        );
        return path;
    }
    let path_dirs = std::env::var_os("PATH").unwrap_or_default();
    let mut dirs: Vec<PathBuf> = std::env::split_paths(&path_dirs).collect();
    dirs.extend(extra_dirs.iter().map(PathBuf::from));
    dirs.into_iter()
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
        .unwrap_or_else(|| {
            panic!("`{name}` not found in ${env_var}, PATH or {extra_dirs:?}: this test needs it ({hint})")
        })
}

pub fn mosquitto_binary() -> PathBuf {
    program(
        "mosquitto",
        "MOSQUITTO",
        &["/usr/sbin", "/usr/local/sbin"],
        "apt-get install -y mosquitto mosquitto-clients",
    )
}

pub fn mosquitto_pub_binary() -> PathBuf {
    program(
        "mosquitto_pub",
        "MOSQUITTO_PUB",
        &["/usr/bin"],
        "apt-get install -y mosquitto-clients",
    )
}

/// A port nothing listens on right now.
pub fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    listener.local_addr().expect("local address").port()
}

/// A Mosquitto broker of one test, killed by PID (and reaped) when dropped.
pub struct Broker {
    /// The port it listens on.
    pub port: u16,
    /// User name and password `mosquitto_pub` logs in with, if the broker wants them.
    credentials: Option<(String, String)>,
    child: std::process::Child,
    log: mpsc::UnboundedReceiver<String>,
    /// Every log line read so far.
    pub seen: Vec<String>,
}

impl Broker {
    /// Starts Mosquitto on `port` with a config file in `dir`, and waits until it listens.
    pub async fn start(dir: &Path, port: u16) -> Broker {
        Broker::start_with(dir, port, "allow_anonymous true\n", None).await
    }

    /// [`Broker::start`] with more config lines (`settings`) and the credentials
    /// `mosquitto_pub` needs with them.
    pub async fn start_with(
        dir: &Path,
        port: u16,
        settings: &str,
        credentials: Option<(String, String)>,
    ) -> Broker {
        let config = dir.join("mosquitto.conf");
        let text = format!(
            "log_dest stderr\nlog_type all\nconnection_messages true\npersistence false\n\
             listener {port} 127.0.0.1\n{settings}"
        );
        std::fs::write(&config, text).expect("write mosquitto.conf");
        let binary = mosquitto_binary();
        let mut child = std::process::Command::new(&binary)
            .arg("-c")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|error| panic!("cannot start {}: {error}", binary.display()));
        let stderr = child.stderr.take().expect("mosquitto stderr");
        let (tx, log) = mpsc::unbounded_channel();
        // Mosquitto logs to stderr unbuffered; a thread forwards each line as it comes.
        std::thread::spawn(move || {
            for line in std::io::BufRead::lines(std::io::BufReader::new(stderr)) {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut broker = Broker {
            port,
            credentials,
            child,
            log,
            seen: Vec::new(),
        };
        broker.wait_log(" running").await;
        broker
    }

    /// Waits for the next log line holding `needle` and returns it.
    pub async fn wait_log(&mut self, needle: &str) -> String {
        let found = tokio::time::timeout(DEADLINE, async {
            while let Some(line) = self.log.recv().await {
                self.seen.push(line.clone());
                if line.contains(needle) {
                    return Some(line);
                }
            }
            None
        })
        .await;
        match found {
            Ok(Some(line)) => line,
            Ok(None) => panic!(
                "mosquitto exited before logging {needle:?}:\n{}",
                self.seen.join("\n")
            ),
            Err(_) => panic!(
                "mosquitto did not log {needle:?} within {DEADLINE:?}:\n{}",
                self.seen.join("\n")
            ),
        }
    }

    /// Kills the broker (SIGKILL by PID) and waits until it is gone.
    pub fn kill(self) {
        drop(self);
    }

    /// `mosquitto_pub` at this broker, QoS 1, on `topic`, logged in if need be.
    pub fn mosquitto_pub(&self, topic: &str) -> Command {
        let mut command = Command::new(mosquitto_pub_binary());
        command
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-q",
                "1",
                "-t",
                topic,
            ])
            .kill_on_drop(true);
        if let Some((username, password)) = &self.credentials {
            command.args(["-u", username, "-P", password]);
        }
        command
    }

    /// Publishes each payload as one QoS 1 message on `topic` with `mosquitto_pub`, in order,
    /// and returns once the broker has acknowledged them all.
    pub async fn publish(&self, topic: &str, payloads: &[&str]) {
        for payload in payloads {
            let output = within_deadline(
                "mosquitto_pub",
                self.mosquitto_pub(topic).args(["-m", payload]).output(),
            )
            .await
            .expect("run mosquitto_pub");
            assert!(
                output.status.success(),
                "mosquitto_pub {payload:?} failed: {}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
    }

    /// Publishes JSON lines on `topic` over one `mosquitto_pub -l` connection (one message per
    /// line, QoS 1, in order).
    pub async fn publish_lines(&self, topic: &str, lines: &[&str]) {
        let mut child = self
            .mosquitto_pub(topic)
            .arg("-l")
            .stdin(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start mosquitto_pub");
        let mut stdin = child.stdin.take().expect("mosquitto_pub stdin");
        let text = format!("{}\n", lines.join("\n"));
        stdin
            .write_all(text.as_bytes())
            .await
            .expect("write to mosquitto_pub");
        drop(stdin);
        let output = within_deadline("mosquitto_pub -l", child.wait_with_output())
            .await
            .expect("mosquitto_pub");
        assert!(
            output.status.success(),
            "mosquitto_pub -l failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }

    /// Runs the paho-mqtt publisher script: `client.publish(TEMPERATURE_TOPIC, f"{t}")` per value.
    pub async fn publish_with_paho(&self, temperatures: &[&str]) {
        let python = program(
            "python3",
            "PYTHON",
            &[],
            "and paho-mqtt: pip install paho-mqtt",
        );
        let script = workspace_root().join("tests/scripts/mqtt_publish.py");
        let output = within_deadline(
            "the paho-mqtt publisher",
            Command::new(python)
                .arg(script)
                .args(["127.0.0.1", &self.port.to_string()])
                .args(temperatures)
                .kill_on_drop(true)
                .output(),
        )
        .await
        .expect("run python3");
        assert!(
            output.status.success(),
            "the paho-mqtt publisher failed (is paho-mqtt 2.x installed? pip install paho-mqtt): {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
