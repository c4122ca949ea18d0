//! Command jobs: a program named in the worker's own configuration, run without a shell,
//! in a process group of its own that is killed, helpers and all, on timeout, on
//! cancellation and when its worker dies.

use std::io::Read;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::job::{Job, JobError, Metrics, parse_metrics};
use crate::kind::{Context, Kind};

/// A command template that cannot run, found when the worker reads its configuration.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum TemplateError {
    /// `command` names no program.
    #[error("command kind {kind:?}: `command` is empty")]
    Empty {
        /// The kind's name.
        kind: String,
    },
    /// The program is a placeholder: a job could choose what runs.
    #[error(
        "command kind {kind:?}: the program {program:?} may not hold a placeholder; only arguments take parameters"
    )]
    PlaceholderProgram {
        /// The kind's name.
        kind: String,
        /// The program as written.
        program: String,
    },
    /// An argument's placeholders do not parse.
    #[error("command kind {kind:?}, argument {argument:?}: {reason}")]
    Argument {
        /// The kind's name.
        kind: String,
        /// The argument as written.
        argument: String,
        /// What is wrong with it.
        reason: String,
    },
    /// `metrics = "file"` without a `{metrics_file}` argument.
    #[error(
        "command kind {kind:?}: metrics = \"file\" needs a {{metrics_file}} argument telling the program where to write"
    )]
    NoMetricsFile {
        /// The kind's name.
        kind: String,
    },
    /// `timeout_s` is not a positive number.
    #[error("command kind {kind:?}: timeout_s must be a positive number of seconds, not {seconds}")]
    Timeout {
        /// The kind's name.
        kind: String,
        /// The value given.
        seconds: f64,
    },
}

/// A child process that could not be started or waited for.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ChildError {
    /// The program could not be started (not found, not executable).
    #[error("cannot start: {0}")]
    Spawn(std::io::Error),
    /// Its exit could not be collected.
    #[error("cannot wait: {0}")]
    Wait(std::io::Error),
    /// The guard that kills its process group when the worker dies (`/bin/sh`) could not be
    /// started; the program is not run without it.
    #[error("cannot start /bin/sh, which guards the job's process group: {0}")]
    Guard(std::io::Error),
}

/// Where a command leaves its metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MetricsFrom {
    /// A JSON object on standard output (the whole output, or its last JSON line).
    #[default]
    Stdout,
    /// A JSON object written to the path given by the `{metrics_file}` placeholder.
    File,
}

/// A command template from a worker's local configuration file.
///
/// `command` is the program and its arguments. Arguments may hold placeholders:
/// `{seed}`, `{job_id}`, `{params_file}` (a JSON file holding the job's parameters),
/// `{metrics_file}` (where the program writes its metrics when `metrics = "file"`), and
/// `{NAME}` for the job parameter `NAME` (numbers and strings as text, anything else as
/// JSON). `{{` and `}}` are literal braces. The program itself is never a placeholder, and
/// arguments go straight to `execve`: no shell sees them, so a parameter cannot inject
/// anything.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CommandTemplate {
    /// Program and arguments.
    pub command: Vec<String>,
    /// Where the metrics come from.
    #[serde(default)]
    pub metrics: MetricsFrom,
    /// Seconds one attempt may run (the shorter of this and the job's own timeout applies).
    #[serde(default)]
    pub timeout_s: Option<f64>,
    /// Working directory; by default a fresh scratch directory per attempt.
    #[serde(default)]
    pub workdir: Option<PathBuf>,
}

/// Bytes of a failing command's standard error quoted in its error message.
const STDERR_TAIL: usize = 2000;

impl CommandTemplate {
    /// Checks the template once, when the configuration is read; `name` is the kind's
    /// name there.
    pub fn validate(&self, name: &str) -> Result<(), TemplateError> {
        let kind = name.to_owned();
        let program = self
            .command
            .first()
            .ok_or_else(|| TemplateError::Empty { kind: kind.clone() })?;
        if program.contains('{') {
            return Err(TemplateError::PlaceholderProgram {
                kind,
                program: program.clone(),
            });
        }
        for arg in &self.command[1..] {
            split_placeholders(arg).map_err(|reason| TemplateError::Argument {
                kind: kind.clone(),
                argument: arg.clone(),
                reason,
            })?;
        }
        if self.metrics == MetricsFrom::File
            && !self.command.iter().any(|a| a.contains("{metrics_file}"))
        {
            return Err(TemplateError::NoMetricsFile { kind });
        }
        if let Some(t) = self.timeout_s
            && !(t.is_finite() && t > 0.0)
        {
            return Err(TemplateError::Timeout { kind, seconds: t });
        }
        Ok(())
    }

    fn argv(
        &self,
        job: &Job,
        params_file: &str,
        metrics_file: &str,
    ) -> Result<Vec<String>, String> {
        let mut argv = vec![self.command[0].clone()];
        for arg in &self.command[1..] {
            let mut out = String::new();
            for piece in split_placeholders(arg)? {
                match piece {
                    Piece::Text(t) => out.push_str(&t),
                    Piece::Name(n) => out.push_str(&match n.as_str() {
                        "seed" => job.seed.to_string(),
                        "job_id" => job.id.clone(),
                        "params_file" => params_file.to_string(),
                        "metrics_file" => metrics_file.to_string(),
                        _ => match job.params.get(&n) {
                            Some(serde_json::Value::String(s)) => s.clone(),
                            Some(v) => v.to_string(),
                            None => return Err(format!("the command's argument {arg:?} needs parameter {n:?}, which the job lacks")),
                        },
                    }),
                }
            }
            argv.push(out);
        }
        Ok(argv)
    }
}

enum Piece {
    Text(String),
    Name(String),
}

fn split_placeholders(arg: &str) -> Result<Vec<Piece>, String> {
    let mut pieces = Vec::new();
    let mut text = String::new();
    let mut chars = arg.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '{' if chars.peek() == Some(&'{') => {
                chars.next();
                text.push('{');
            }
            '}' if chars.peek() == Some(&'}') => {
                chars.next();
                text.push('}');
            }
            '{' => {
                let mut name = String::new();
                let mut closed = false;
                for c in chars.by_ref() {
                    if c == '}' {
                        closed = true;
                        break;
                    }
                    name.push(c);
                }
                if !closed {
                    return Err("unclosed '{' (write '{{' for a literal brace)".into());
                }
                if name.is_empty()
                    || !name
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '.')
                {
                    return Err(format!(
                        "bad placeholder {{{name}}}: use {{NAME}} with letters, digits, '_', '-', '.'"
                    ));
                }
                pieces.push(Piece::Text(std::mem::take(&mut text)));
                pieces.push(Piece::Name(name));
            }
            '}' => return Err("unmatched '}' (write '}}' for a literal brace)".into()),
            c => text.push(c),
        }
    }
    pieces.push(Piece::Text(text));
    Ok(pieces)
}

impl Kind for CommandTemplate {
    fn run(&self, job: &Job, ctx: &Context) -> Result<Metrics, JobError> {
        let scratch = tempfile::Builder::new()
            .prefix("frugal-job-")
            .tempdir()
            .map_err(|e| format!("cannot create a scratch directory: {e}"))?;
        let params_file = scratch.path().join("params.json");
        let metrics_file = scratch.path().join("metrics.json");
        std::fs::write(
            &params_file,
            serde_json::to_vec(&job.params).map_err(|e| e.to_string())?,
        )
        .map_err(|e| format!("cannot write {}: {e}", params_file.display()))?;
        let argv = self.argv(
            job,
            &params_file.to_string_lossy(),
            &metrics_file.to_string_lossy(),
        )?;
        let mut cmd = Command::new(&argv[0]);
        cmd.args(&argv[1..])
            .current_dir(self.workdir.as_deref().unwrap_or(scratch.path()))
            .env("FRUGAL_JOB_ID", &job.id)
            .env("FRUGAL_SEED", job.seed.to_string());
        let deadline = match (ctx.deadline(), self.timeout_s) {
            (Some(d), Some(t)) => Some(d.min(Instant::now() + Duration::from_secs_f64(t))),
            (d, t) => d.or_else(|| t.map(|t| Instant::now() + Duration::from_secs_f64(t))),
        };
        let run = run_child(cmd, deadline, ctx).map_err(|e| format!("{}: {e}", argv[0]))?;
        if let Some(why) = run.stopped {
            return Err(format!("{} {why}{}", argv[0], quote_tail(&run.stderr)).into());
        }
        if !run.status.success() {
            return Err(format!(
                "{} failed ({}){}",
                argv[0],
                run.status,
                quote_tail(&run.stderr)
            )
            .into());
        }
        let text = match self.metrics {
            MetricsFrom::Stdout => String::from_utf8_lossy(&run.stdout).into_owned(),
            MetricsFrom::File => std::fs::read_to_string(&metrics_file).map_err(|e| {
                format!(
                    "{} exited 0 but its metrics file {} cannot be read: {e}",
                    argv[0],
                    metrics_file.display()
                )
            })?,
        };
        parse_metrics(&text).map_err(|e| JobError::new(format!("{}: {e}", argv[0])))
    }
}

fn quote_tail(stderr: &[u8]) -> String {
    let text = String::from_utf8_lossy(stderr);
    let text = text.trim();
    if text.is_empty() {
        return String::new();
    }
    let start = text.len().saturating_sub(STDERR_TAIL);
    let start = (start..text.len())
        .find(|&i| text.is_char_boundary(i))
        .unwrap_or(text.len());
    format!("; stderr: {}", &text[start..])
}

/// What became of a child process.
#[derive(Debug)]
pub struct ChildRun {
    /// Its exit status.
    pub status: ExitStatus,
    /// Everything it wrote to standard output.
    pub stdout: Vec<u8>,
    /// Its standard error.
    pub stderr: Vec<u8>,
    /// Why it was killed (`timed out after …`, cancelled), if it was.
    pub stopped: Option<String>,
}

/// Runs `cmd` to completion in a process group of its own, killing the whole group at
/// `deadline`, when `ctx` is cancelled, after the program exits (whatever it left running
/// goes with it), and when this process dies, however it dies.
///
/// The last is the guard's work: a small `/bin/sh` started first, as the leader of the
/// group the program then joins. Its standard input is a pipe whose only writer is this
/// process; when this process dies the kernel closes that end, the guard reads end-of-file
/// and SIGKILLs its group. The program also gets the parent-death signal, so it dies at once
/// even before the guard has run. A process that leaves the group (setsid, setpgid) escapes
/// all of this.
pub fn run_child(
    mut cmd: Command,
    deadline: Option<Instant>,
    ctx: &Context,
) -> Result<ChildRun, ChildError> {
    let guard = Guard::start()?;
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    join_group_die_with_parent(&mut cmd, guard.group);
    let started = Instant::now();
    let mut child = cmd.spawn().map_err(ChildError::Spawn)?;
    let stdout = drain(child.stdout.take());
    let stderr = drain(child.stderr.take());
    let mut stopped = None;
    let mut nap = Duration::from_millis(1);
    let status = loop {
        if let Some(status) = child.try_wait().map_err(ChildError::Wait)? {
            break status;
        }
        let why = if ctx.cancelled() {
            Some("was cancelled: the worker is shutting down".to_string())
        } else if deadline.is_some_and(|d| Instant::now() >= d) {
            Some(format!(
                "timed out after {:.1} s and was killed",
                started.elapsed().as_secs_f64()
            ))
        } else if guard.died() {
            // Without its guard the job would outlive a killed worker; only SIGKILL (which
            // it cannot ignore) ends the guard early.
            Some("was killed: its guard (the /bin/sh leading its process group) was killed".into())
        } else {
            None
        };
        if let Some(why) = why {
            guard.kill_group();
            // The program itself may have left the group (setsid); waiting must not hang.
            let _ = child.kill();
            stopped = Some(why);
            break wait(&mut child)?;
        }
        std::thread::sleep(nap);
        nap = (nap * 2).min(Duration::from_millis(20));
    };
    // Kills what the program left running in its group (which holds its output pipes open)
    // and reaps the guard.
    drop(guard);
    Ok(ChildRun {
        status,
        stdout: stdout.join().unwrap_or_default(),
        stderr: stderr.join().unwrap_or_default(),
        stopped,
    })
}

/// The guard's script. It ignores the catchable signals a job may send its own group (`kill
/// 0` in a script's exit trap, a terminal's stop keys), so only end-of-file on its standard
/// input, or SIGKILL, ends it; then it says it is ready.
const GUARD_SCRIPT: &str = "trap '' HUP INT QUIT TERM PIPE ALRM USR1 USR2 TSTP TTIN TTOU; echo; read -r _line; kill -s KILL 0";

/// A job's guard: the leader of its process group, alive until that group is killed.
struct Guard {
    child: Child,
    group: rustix::process::Pid,
    /// The pipe's only writer (close-on-exec, so no other program keeps it); its end is
    /// the guard's signal.
    _lifeline: std::io::PipeWriter,
}

impl Guard {
    fn start() -> Result<Self, ChildError> {
        use std::os::unix::process::CommandExt;
        let (read, lifeline) = std::io::pipe().map_err(ChildError::Guard)?;
        let child = Command::new("/bin/sh")
            .args(["-c", GUARD_SCRIPT, "frugal-job-guard"])
            .env_clear()
            // Holds no directory (a scratch directory, a mount) busy.
            .current_dir("/")
            .stdin(read)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .map_err(ChildError::Guard)?;
        let group = rustix::process::Pid::from_child(&child);
        let mut guard = Self {
            child,
            group,
            _lifeline: lifeline,
        };
        // A job that signals its group at once must find the traps already set.
        let mut ready = [0u8];
        if let Some(mut out) = guard.child.stdout.take() {
            loop {
                match out.read(&mut ready) {
                    Ok(1) => break,
                    Ok(_) => {
                        return Err(ChildError::Guard(std::io::Error::other(
                            "it exited before it was ready",
                        )));
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(ChildError::Guard(e)),
                }
            }
        }
        Ok(guard)
    }

    /// Whether the guard has exited, leaving it unreaped: until it is reaped its pid, the
    /// group's id, cannot be reused, so killing the group can never hit another process.
    fn died(&self) -> bool {
        use rustix::process::{WaitId, WaitIdOptions, waitid};
        waitid(
            WaitId::Pid(self.group),
            WaitIdOptions::EXITED | WaitIdOptions::NOHANG | WaitIdOptions::NOWAIT,
        )
        .is_ok_and(|s| s.is_some())
    }

    fn kill_group(&self) {
        let _ = rustix::process::kill_process_group(self.group, rustix::process::Signal::KILL);
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        self.kill_group();
        let _ = self.child.wait();
    }
}

fn wait(child: &mut Child) -> Result<ExitStatus, ChildError> {
    child.wait().map_err(ChildError::Wait)
}

fn drain<R: Read + Send + 'static>(pipe: Option<R>) -> std::thread::JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        if let Some(mut p) = pipe {
            let _ = p.read_to_end(&mut buf);
        }
        buf
    })
}

/// Puts the child in its guard's process group (so one kill ends it and its helpers) and
/// asks the kernel to SIGKILL it when its parent dies: it then dies at once, before the
/// guard has read end-of-file. Linux sends that signal when the forking *thread* exits,
/// which here is the thread waiting in [`run_child`]; the guard watches the whole process.
#[allow(unsafe_code)]
fn join_group_die_with_parent(cmd: &mut Command, group: rustix::process::Pid) {
    use std::os::unix::process::CommandExt;
    cmd.process_group(group.as_raw_nonzero().get());
    let parent = rustix::process::getpid();
    // SAFETY: the closure runs in the child between fork and exec, where only
    // async-signal-safe work is allowed. It makes two raw system calls (prctl and getppid)
    // through rustix, which neither allocates nor takes locks, and builds its error from
    // a constant errno.
    unsafe {
        cmd.pre_exec(move || {
            rustix::process::set_parent_process_death_signal(Some(rustix::process::Signal::KILL))?;
            // The parent may have died before prctl took effect: then nobody would signal us.
            if rustix::process::getppid() != Some(parent) {
                return Err(std::io::Error::from_raw_os_error(
                    rustix::io::Errno::SRCH.raw_os_error(),
                ));
            }
            Ok(())
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::path::Path;

    fn template(command: &[&str]) -> CommandTemplate {
        CommandTemplate {
            command: command.iter().map(|s| s.to_string()).collect(),
            metrics: MetricsFrom::Stdout,
            timeout_s: None,
            workdir: None,
        }
    }

    #[test]
    fn parameters_become_whole_arguments_never_shell_text() {
        let t = template(&["echo", "--x={x}", "{name}", "{{literal}}", "{seed}"]);
        t.validate("t").unwrap();
        let job = Job::new("j1", "t", json!({"x": 1.5, "name": "a b; rm -rf /"}), 42);
        let argv = t.argv(&job, "p", "m").unwrap();
        assert_eq!(
            argv,
            ["echo", "--x=1.5", "a b; rm -rf /", "{literal}", "42"]
        );
        let e = t
            .argv(&Job::new("j2", "t", json!({"x": 1}), 0), "p", "m")
            .unwrap_err();
        assert!(e.contains("\"name\""), "{e}");
    }

    #[test]
    fn templates_are_checked_when_read() {
        assert!(template(&[]).validate("t").is_err());
        assert!(
            template(&["{program}", "x"])
                .validate("t")
                .unwrap_err()
                .to_string()
                .contains("program")
        );
        assert!(template(&["echo", "{a"]).validate("t").is_err());
        assert!(template(&["echo", "a}"]).validate("t").is_err());
        let mut t = template(&["echo"]);
        t.metrics = MetricsFrom::File;
        assert!(
            t.validate("t")
                .unwrap_err()
                .to_string()
                .contains("metrics_file")
        );
    }

    #[test]
    fn runs_reads_metrics_and_reports_failures() {
        let ctx = Context::unbounded();
        let job = Job::new("j", "t", json!({"v": 3}), 1);
        let m = template(&["printf", "log line\\n{{\"v\": %s}}\\n", "{v}"])
            .run(&job, &ctx)
            .unwrap();
        assert_eq!(m.get("v"), Some(&3.0));
        let e = template(&["sh", "-c", "echo oops >&2; exit 3"])
            .run(&job, &ctx)
            .unwrap_err();
        assert!(
            e.to_string().contains("exit status: 3") && e.to_string().contains("oops"),
            "{e}"
        );
        let e = template(&["/nonexistent/program"])
            .run(&job, &ctx)
            .unwrap_err();
        assert!(e.to_string().contains("cannot start"), "{e}");
        let mut t = template(&["sh", "-c", "echo '{{\"a\": 2}}' > \"$0\"", "{metrics_file}"]);
        t.metrics = MetricsFrom::File;
        assert_eq!(t.run(&job, &ctx).unwrap().get("a"), Some(&2.0));
    }

    #[test]
    fn timeout_kills_the_whole_group() {
        let dir = tempfile::tempdir().unwrap();
        let pidfile = dir.path().join("grandchild");
        let mut t = template(&[
            "sh",
            "-c",
            "sleep 30 & echo $! > \"$0\"; wait",
            &pidfile.to_string_lossy(),
        ]);
        t.timeout_s = Some(0.5);
        let start = Instant::now();
        let e = t
            .run(&Job::new("j", "t", json!({}), 0), &Context::unbounded())
            .unwrap_err();
        assert!(e.to_string().contains("timed out"), "{e}");
        assert!(start.elapsed() < Duration::from_secs(10));
        let pid: u32 = std::fs::read_to_string(&pidfile)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        assert!(
            crate::testing::gone(pid, Duration::from_secs(5)),
            "the grandchild {pid} outlived the timeout"
        );
    }

    fn sh(script: &str, args: &[&Path]) -> Command {
        let mut cmd = Command::new("sh");
        cmd.arg("-c").arg(script).arg("sh").args(args);
        cmd
    }

    /// Waits for `file` to hold a whole line (a pid) and reads it.
    fn pid_in(file: &Path) -> u32 {
        let start = Instant::now();
        loop {
            if let Ok(s) = std::fs::read_to_string(file)
                && s.ends_with('\n')
            {
                return s.trim().parse().unwrap();
            }
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "{} was never written",
                file.display()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// A process's pid and process group (for a job, its guard's pid) from its
    /// `/proc/PID/stat` line.
    fn pid_and_group(stat: &str) -> (u32, u32) {
        let (pid, rest) = stat.split_once(' ').unwrap();
        let (_, rest) = rest.rsplit_once(')').unwrap();
        let group = rest.split_whitespace().nth(2).unwrap();
        (pid.parse().unwrap(), group.parse().unwrap())
    }

    /// A live process's process group.
    fn group_of(pid: u32) -> u32 {
        pid_and_group(&std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap()).1
    }

    /// Where [`killed_worker`] writes its job's and helper's pids.
    const WORKER_DIR: &str = "FRUGAL_FARM_TEST_KILLED_WORKER_DIR";

    /// The worker of `a_killed_worker_takes_the_jobs_helpers_with_it`, run in a process of
    /// its own; by itself (no directory given) it does nothing.
    #[test]
    #[ignore = "started by a_killed_worker_takes_the_jobs_helpers_with_it"]
    fn killed_worker() {
        let Some(dir) = std::env::var_os(WORKER_DIR) else {
            return;
        };
        let dir = Path::new(&dir);
        let cmd = sh(
            "echo $$ > \"$1.tmp\" && mv \"$1.tmp\" \"$1\"; sleep 300 & echo $! > \"$2.tmp\" && mv \"$2.tmp\" \"$2\"; wait",
            &[&dir.join("job"), &dir.join("helper")],
        );
        let _ = run_child(cmd, None, &Context::unbounded());
        panic!("the job ended while its worker was alive");
    }

    #[test]
    fn a_killed_worker_takes_the_jobs_helpers_with_it() {
        let dir = tempfile::tempdir().unwrap();
        let worker = Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "command::tests::killed_worker",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(WORKER_DIR, dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut worker = crate::testing::KillOnDrop(worker);
        let job = pid_in(&dir.path().join("job"));
        let helper = pid_in(&dir.path().join("helper"));
        let guard = group_of(job);
        assert_eq!(group_of(helper), guard);
        assert_ne!(guard, job, "the job should be in its guard's group");
        for pid in [job, helper, guard] {
            assert!(
                !crate::testing::gone(pid, Duration::ZERO),
                "{pid} died early"
            );
        }
        worker.0.kill().unwrap();
        worker.0.wait().unwrap();
        for (what, pid) in [("job", job), ("helper", helper), ("guard", guard)] {
            assert!(
                crate::testing::gone(pid, Duration::from_secs(5)),
                "the {what} {pid} outlived its killed worker"
            );
        }
    }

    #[test]
    fn statuses_pass_through_and_helpers_go_with_the_job() {
        let ctx = Context::unbounded();
        let run = run_child(sh("echo out; echo err >&2; exit 7", &[]), None, &ctx).unwrap();
        assert_eq!(run.status.code(), Some(7));
        assert_eq!(
            (&run.stdout[..], &run.stderr[..]),
            (&b"out\n"[..], &b"err\n"[..])
        );
        assert!(run.stopped.is_none());

        use std::os::unix::process::ExitStatusExt;
        let run = run_child(sh("kill -s TERM $$; sleep 5", &[]), None, &ctx).unwrap();
        let term = rustix::process::Signal::TERM.as_raw();
        assert_eq!(run.status.signal(), Some(term), "{:?}", run.status);
        assert!(run.stopped.is_none());

        // A job that exits at once, leaving a helper behind: the helper and the guard go.
        let dir = tempfile::tempdir().unwrap();
        let helper = dir.path().join("helper");
        let stat = dir.path().join("stat");
        let run = run_child(
            sh(
                "cat /proc/$$/stat > \"$1\"; sleep 300 & echo $! > \"$2\"",
                &[&stat, &helper],
            ),
            None,
            &ctx,
        )
        .unwrap();
        assert!(run.status.success());
        let helper = pid_in(&helper);
        let job_stat = std::fs::read_to_string(&stat).unwrap();
        let (job, guard) = pid_and_group(&job_stat);
        assert_ne!(guard, job);
        assert!(crate::testing::gone(helper, Duration::from_secs(5)));
        assert!(crate::testing::gone(guard, Duration::from_secs(5)));
    }

    #[test]
    fn timeout_kills_a_job_that_left_its_group() {
        let mut cmd = Command::new("setsid");
        cmd.args(["sleep", "30"]);
        let start = Instant::now();
        let deadline = Some(start + Duration::from_millis(300));
        let run = run_child(cmd, deadline, &Context::unbounded()).unwrap();
        assert!(run.stopped.unwrap().contains("timed out"));
        assert!(start.elapsed() < Duration::from_secs(10));
    }

    #[test]
    fn a_job_signalling_its_own_group_does_not_end_its_guard() {
        // A script's `kill 0` (SIGTERM to its whole group) must not take the guard with it.
        let run = run_child(
            sh("trap '' TERM; kill 0; sleep 0.3; exit 3", &[]),
            None,
            &Context::unbounded(),
        )
        .unwrap();
        assert_eq!(run.status.code(), Some(3), "{:?}", run.stopped);
        assert!(run.stopped.is_none(), "{:?}", run.stopped);
    }

    #[test]
    fn a_killed_guard_ends_its_job() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("job");
        let cmd = sh(
            "echo $$ > \"$1.tmp\" && mv \"$1.tmp\" \"$1\"; exec sleep 300",
            &[&file],
        );
        let run = std::thread::spawn(move || run_child(cmd, None, &Context::unbounded()));
        let job = pid_in(&file);
        let guard = group_of(job);
        rustix::process::kill_process(
            rustix::process::Pid::from_raw(guard as i32).unwrap(),
            rustix::process::Signal::KILL,
        )
        .unwrap();
        let run = run.join().unwrap().unwrap();
        let why = run.stopped.unwrap();
        assert!(why.contains("guard"), "{why}");
        assert!(crate::testing::gone(job, Duration::from_secs(5)));
    }
}
