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
    tls: bool,
    _dir: tempfile::TempDir,
}

/// A throwaway certificate authority with a certificate for 127.0.0.1 and a client
/// certificate, made with the `openssl` program.
pub struct TestCerts {
    dir: tempfile::TempDir,
}

impl TestCerts {
    /// Makes them; `None` when `openssl` is missing or fails.
    pub fn new() -> Option<Self> {
        let dir = tempfile::tempdir().ok()?;
        let d = dir.path();
        std::fs::write(d.join("server.ext"), "subjectAltName=IP:127.0.0.1\n").ok()?;
        std::fs::write(d.join("client.ext"), "extendedKeyUsage=clientAuth\n").ok()?;
        let openssl = |args: &[&str]| {
            Command::new("openssl")
                .args(args)
                .current_dir(d)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        };
        let key = [
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
        ];
        let mut ca = vec!["req", "-x509"];
        ca.extend_from_slice(&key);
        ca.extend_from_slice(&["-keyout", "ca.key", "-out", "ca.crt", "-days", "2"]);
        ca.extend_from_slice(&["-subj", "/CN=frugal-test-ca"]);
        let ok = openssl(&ca)
            && ["server", "client"].iter().all(|who| {
                let (k, csr, crt, ext) = (
                    format!("{who}.key"),
                    format!("{who}.csr"),
                    format!("{who}.crt"),
                    format!("{who}.ext"),
                );
                let subject = format!("/CN={who}");
                let mut req = vec!["req"];
                req.extend_from_slice(&key);
                req.extend_from_slice(&["-keyout", &k, "-out", &csr, "-subj", &subject]);
                openssl(&req)
                    && openssl(&[
                        "x509",
                        "-req",
                        "-in",
                        &csr,
                        "-CA",
                        "ca.crt",
                        "-CAkey",
                        "ca.key",
                        "-CAcreateserial",
                        "-days",
                        "2",
                        "-out",
                        &crt,
                        "-extfile",
                        &ext,
                    ])
            });
        ok.then_some(Self { dir })
    }

    /// The PEM file `name` (`ca.crt`, `server.crt`, `server.key`, `client.crt`, `client.key`).
    pub fn path(&self, name: &str) -> std::path::PathBuf {
        self.dir.path().join(name)
    }
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

    /// Starts one that speaks only TLS with `certs`' server certificate, requiring clients
    /// to present a certificate of the same authority when `client_certs` is set.
    pub fn start_tls(certs: &TestCerts, client_certs: bool) -> Option<Self> {
        let path = |n: &str| certs.path(n).to_string_lossy().into_owned();
        let tls = [
            "--tls-cert-file".to_string(),
            path("server.crt"),
            "--tls-key-file".into(),
            path("server.key"),
            "--tls-ca-cert-file".into(),
            path("ca.crt"),
            "--tls-auth-clients".into(),
            if client_certs { "yes" } else { "no" }.into(),
        ];
        Self::launch(None, Some(&tls))
    }

    /// Starts one that requires `password`.
    pub fn start_with(password: Option<&str>) -> Option<Self> {
        Self::launch(password, None)
    }

    fn launch(password: Option<&str>, tls: Option<&[String]>) -> Option<Self> {
        // Tests start servers from parallel threads: one at a time, so two never race for
        // the same free port.
        static LAUNCH: std::sync::Mutex<()> = std::sync::Mutex::new(());
        let _one_at_a_time = LAUNCH.lock().unwrap_or_else(|e| e.into_inner());
        // The free port may be taken between finding it and the server binding it: retry.
        for _ in 0..20 {
            let port = TcpListener::bind("127.0.0.1:0")
                .ok()?
                .local_addr()
                .ok()?
                .port();
            let dir = tempfile::tempdir().ok()?;
            let mut cmd = Command::new("redis-server");
            // Only TLS servers get TLS options: builds without TLS refuse them.
            let plain = if tls.is_some() { 0 } else { port };
            cmd.args([
                "--port",
                &plain.to_string(),
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
            if let Some(args) = tls {
                cmd.args(["--tls-port", &port.to_string()]).args(args);
            }
            let child = cmd.spawn().ok()?;
            let mut server = Self {
                child,
                port,
                password: password.map(str::to_string),
                tls: tls.is_some(),
                _dir: dir,
            };
            let start = Instant::now();
            while start.elapsed() < Duration::from_secs(10) {
                if let Ok(Some(_)) = server.child.try_wait() {
                    break;
                }
                if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                    // Something answers on the port; it is this server only if this one
                    // is still running (a server that lost the port to another exits).
                    std::thread::sleep(Duration::from_millis(100));
                    if let Ok(None) = server.child.try_wait() {
                        return Some(server);
                    }
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        None
    }

    /// URL of the server (`rediss://` for TLS), with its password.
    pub fn url(&self) -> String {
        let scheme = if self.tls { "rediss" } else { "redis" };
        match &self.password {
            Some(p) => format!("{scheme}://:{p}@127.0.0.1:{}/", self.port),
            None => format!("{scheme}://127.0.0.1:{}/", self.port),
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

/// A child process killed (and reaped) when dropped, so a failing test leaves no workers
/// running.
pub struct KillOnDrop(pub Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
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
