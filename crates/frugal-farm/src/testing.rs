//! Test support: a throwaway `redis-server` on a free loopback port, and process checks.

use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A `redis-server` of its own, on a free port of 127.0.0.1, with no persistence; killed
/// when dropped.
pub struct RedisServer {
    child: Child,
    port: u16,
    password: Option<String>,
    _dir: tempfile::TempDir,
}

impl RedisServer {
    /// Starts one; `None` when `redis-server` is not installed.
    pub fn start() -> Option<Self> {
        Self::start_with(None)
    }

    /// Starts one for a test; `None` (with a note on stderr) when `redis-server` is not
    /// installed, unless `FRUGAL_REQUIRE_REDIS=1` (as in CI), which makes that a failure.
    pub fn for_test(password: Option<&str>) -> Option<Self> {
        let server = Self::start_with(password);
        if server.is_none() {
            assert!(
                std::env::var("FRUGAL_REQUIRE_REDIS").as_deref() != Ok("1"),
                "FRUGAL_REQUIRE_REDIS=1 but redis-server cannot be started"
            );
            use std::io::Write;
            let _ = writeln!(std::io::stderr(), "skipped: redis-server is not installed");
        }
        server
    }

    /// Starts one that requires `password`.
    pub fn start_with(password: Option<&str>) -> Option<Self> {
        // The free port may be taken between finding it and the server binding it: retry.
        for _ in 0..20 {
            let port = TcpListener::bind("127.0.0.1:0")
                .ok()?
                .local_addr()
                .ok()?
                .port();
            let dir = tempfile::tempdir().ok()?;
            let mut cmd = Command::new("redis-server");
            cmd.args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .arg("--dir")
            .arg(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
            if let Some(p) = password {
                cmd.args(["--requirepass", p]);
            }
            let child = cmd.spawn().ok()?;
            let mut server = Self {
                child,
                port,
                password: password.map(str::to_string),
                _dir: dir,
            };
            let start = Instant::now();
            while start.elapsed() < Duration::from_secs(10) {
                if let Ok(Some(_)) = server.child.try_wait() {
                    break;
                }
                if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                    return Some(server);
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        None
    }

    /// `redis://` URL of the server, with its password.
    pub fn url(&self) -> String {
        match &self.password {
            Some(p) => format!("redis://:{p}@127.0.0.1:{}/", self.port),
            None => format!("redis://127.0.0.1:{}/", self.port),
        }
    }

    /// Its port.
    pub fn port(&self) -> u16 {
        self.port
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Whether process `pid` is gone (or a zombie: dead, waiting for a parent to reap it)
/// within `within`.
pub fn gone(pid: u32, within: Duration) -> bool {
    let start = Instant::now();
    loop {
        let stat = std::fs::read_to_string(Path::new("/proc").join(pid.to_string()).join("stat"));
        let dead = match stat {
            Err(_) => true,
            // The state follows the parenthesised command name, which may itself hold spaces.
            Ok(s) => s
                .rsplit_once(')')
                .is_some_and(|(_, rest)| rest.trim_start().starts_with(['Z', 'X'])),
        };
        if dead {
            return true;
        }
        if start.elapsed() > within {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
