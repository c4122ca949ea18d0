//! Metrics files: one JSON object per line (`metrics.jsonl`) and the same records as CSV
//! (`metrics.csv`). A resumed run first cuts both back to the checkpoint's step, so the
//! files of a resumed run equal those of an uninterrupted one.

use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Which split a record describes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Split {
    /// Running averages over the training steps since the previous record.
    Train,
    /// A full pass over the held-out split.
    Eval,
}

/// One line of the metrics files.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// Train or eval.
    pub split: Split,
    /// Optimizer steps completed.
    pub step: u64,
    /// Epoch the step belongs to (0-based).
    pub epoch: u64,
    /// Mean loss.
    pub loss: f64,
    /// Fraction of samples classified right, where the task has classes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub accuracy: Option<f64>,
    /// Learning rate of the last step (train records).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lr: Option<f64>,
    /// Loss scale in effect (f16 training).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub loss_scale: Option<f64>,
    /// Training samples per second since the previous train record.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub samples_per_s: Option<f64>,
    /// Mean iterations of the fixed-point solves since the previous train record (tasks
    /// whose step solves for an equilibrium).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iterations_mean: Option<f64>,
    /// The most iterations one of those solves took.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iterations_max: Option<u64>,
    /// The fraction of those solves that stopped at the iteration limit unconverged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unconverged: Option<f64>,
}

/// Running totals of a task's fixed-point solves (an equilibrium model's phases): what a
/// train record reports as mean and most iterations and the fraction not converged.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Solves {
    /// Solves run.
    pub count: u64,
    /// Iterations over all of them.
    pub iterations: u64,
    /// The most iterations one took.
    pub max_iterations: u64,
    /// Solves that stopped at the limit.
    pub unconverged: u64,
}

impl Solves {
    /// Adds one solve.
    pub fn record(&mut self, iterations: u64, converged: bool) {
        self.count += 1;
        self.iterations += iterations;
        self.max_iterations = self.max_iterations.max(iterations);
        self.unconverged += u64::from(!converged);
    }

    /// Adds another window's solves.
    pub fn merge(&mut self, other: &Solves) {
        self.count += other.count;
        self.iterations += other.iterations;
        self.max_iterations = self.max_iterations.max(other.max_iterations);
        self.unconverged += other.unconverged;
    }

    /// Mean iterations, most iterations and the unconverged fraction; `None` without solves.
    pub fn summary(&self) -> Option<(f64, u64, f64)> {
        (self.count > 0).then(|| {
            let n = self.count as f64;
            (
                self.iterations as f64 / n,
                self.max_iterations,
                self.unconverged as f64 / n,
            )
        })
    }
}

const CSV_HEADER: &str = "split,step,epoch,loss,accuracy,lr,loss_scale,samples_per_s,iterations_mean,iterations_max,unconverged";

fn csv_line(r: &Record) -> String {
    let opt = |v: Option<f64>| v.map(|v| v.to_string()).unwrap_or_default();
    let split = match r.split {
        Split::Train => "train",
        Split::Eval => "eval",
    };
    format!(
        "{split},{},{},{},{},{},{},{},{},{},{}",
        r.step,
        r.epoch,
        r.loss,
        opt(r.accuracy),
        opt(r.lr),
        opt(r.loss_scale),
        opt(r.samples_per_s),
        opt(r.iterations_mean),
        r.iterations_max.map(|v| v.to_string()).unwrap_or_default(),
        opt(r.unconverged)
    )
}

/// Appends records to the two files.
#[derive(Debug)]
pub struct MetricsLog {
    jsonl: BufWriter<File>,
    csv: BufWriter<File>,
    jsonl_path: PathBuf,
    records: Vec<Record>,
}

impl MetricsLog {
    /// The JSONL file's name in a run directory.
    pub const JSONL: &'static str = "metrics.jsonl";
    /// The CSV file's name in a run directory.
    pub const CSV: &'static str = "metrics.csv";

    /// Opens the files in `dir` keeping the records up to and including step `keep_until`
    /// (`None`: start afresh). Both files are rewritten through temporary names first.
    pub fn open(dir: &Path, keep_until: Option<u64>) -> io::Result<Self> {
        let jsonl_path = dir.join(Self::JSONL);
        let csv_path = dir.join(Self::CSV);
        let records = match keep_until {
            None => Vec::new(),
            Some(step) => read_records(&jsonl_path)?
                .into_iter()
                .filter(|r| r.step <= step)
                .collect(),
        };
        let mut json_text = String::new();
        let mut csv_text = format!("{CSV_HEADER}\n");
        for r in &records {
            json_text += &serde_json::to_string(r).map_err(io::Error::other)?;
            json_text.push('\n');
            csv_text += &csv_line(r);
            csv_text.push('\n');
        }
        frugal_store::atomic_write(&jsonl_path, json_text.as_bytes()).map_err(io::Error::other)?;
        frugal_store::atomic_write(&csv_path, csv_text.as_bytes()).map_err(io::Error::other)?;
        let append = |p: &Path| OpenOptions::new().append(true).open(p).map(BufWriter::new);
        Ok(Self {
            jsonl: append(&jsonl_path)?,
            csv: append(&csv_path)?,
            jsonl_path,
            records,
        })
    }

    /// Appends one record to both files.
    pub fn push(&mut self, record: Record) -> io::Result<()> {
        serde_json::to_writer(&mut self.jsonl, &record).map_err(io::Error::other)?;
        self.jsonl.write_all(b"\n")?;
        writeln!(self.csv, "{}", csv_line(&record))?;
        self.records.push(record);
        Ok(())
    }

    /// Flushes both files to the operating system and syncs them to disk.
    pub fn sync(&mut self) -> io::Result<()> {
        self.jsonl.flush()?;
        self.csv.flush()?;
        self.jsonl.get_ref().sync_data()?;
        self.csv.get_ref().sync_data()
    }

    /// Every record of the run so far, resumed ones included.
    pub fn records(&self) -> &[Record] {
        &self.records
    }

    /// The records, closing the files.
    pub fn into_records(self) -> Vec<Record> {
        self.records
    }

    /// Where the JSONL file is.
    pub fn path(&self) -> &Path {
        &self.jsonl_path
    }
}

/// Reads a metrics JSONL file; a torn last line (a run killed mid-write, so it has no
/// newline) is dropped, while a damaged line before it is an error.
pub fn read_records(path: &Path) -> io::Result<Vec<Record>> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut out = Vec::new();
    for (number, line) in text.split_inclusive('\n').enumerate() {
        match serde_json::from_str(line) {
            Ok(r) => out.push(r),
            Err(_) if line.trim().is_empty() || !line.ends_with('\n') => {}
            Err(e) => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("{} line {}: {e}", path.display(), number + 1),
                ));
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(step: u64) -> Record {
        Record {
            split: Split::Train,
            step,
            epoch: 0,
            loss: step as f64 / 8.0,
            accuracy: Some(0.5),
            lr: Some(1e-3),
            loss_scale: None,
            samples_per_s: Some(100.0),
            iterations_mean: None,
            iterations_max: None,
            unconverged: None,
        }
    }

    #[test]
    fn resuming_cuts_both_files_back_to_the_checkpoint() {
        let dir = std::env::temp_dir().join(format!("frugal-metrics-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut log = MetricsLog::open(&dir, None).unwrap();
        for s in [10, 20, 30] {
            log.push(rec(s)).unwrap();
        }
        log.sync().unwrap();
        drop(log);
        let mut log = MetricsLog::open(&dir, Some(20)).unwrap();
        log.push(rec(30)).unwrap();
        log.sync().unwrap();
        let steps: Vec<u64> = read_records(log.path())
            .unwrap()
            .iter()
            .map(|r| r.step)
            .collect();
        assert_eq!(steps, [10, 20, 30]);
        let csv = std::fs::read_to_string(dir.join(MetricsLog::CSV)).unwrap();
        assert_eq!(csv.lines().count(), 4);
        assert!(csv.starts_with(CSV_HEADER));
        assert_eq!(
            csv.lines().nth(1).unwrap(),
            "train,10,0,1.25,0.5,0.001,,100,,,"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_torn_last_line_is_dropped_and_a_damaged_earlier_one_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(MetricsLog::JSONL);
        let line = |s| serde_json::to_string(&rec(s)).unwrap() + "\n";
        let whole = line(10) + &line(20);
        std::fs::write(&path, format!("{whole}{}", &line(30)[..25])).unwrap();
        let steps: Vec<u64> = read_records(&path)
            .unwrap()
            .iter()
            .map(|r| r.step)
            .collect();
        assert_eq!(steps, [10, 20]);
        std::fs::write(&path, format!("{}\n{whole}", &line(5)[..25])).unwrap();
        let err = read_records(&path).unwrap_err().to_string();
        assert!(err.contains("line 1"), "{err}");
    }

    #[test]
    fn solves_summarise_mean_most_and_unconverged() {
        let mut a = Solves::default();
        assert_eq!(a.summary(), None);
        a.record(10, true);
        a.record(50, false);
        let mut b = Solves::default();
        b.record(30, true);
        a.merge(&b);
        assert_eq!(a.summary(), Some((30.0, 50, 1.0 / 3.0)));
    }
}
