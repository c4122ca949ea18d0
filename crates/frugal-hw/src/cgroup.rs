//! Control groups: the memory limit and CPU quota the kernel actually enforces on us.
//!
//! The cgroup of this process is named in `/proc/self/cgroup`; where its hierarchy is
//! mounted is in `/proc/self/mountinfo`. Both cgroup v1 (one hierarchy per controller)
//! and v2 (one unified hierarchy) are read, and hybrid systems that mount both. A limit
//! set on any ancestor binds too, so the effective limit is the smallest one on the path
//! from our cgroup up to the root of the mount.

use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::error::{HwError, Result, read_to_string};

/// Limits at or above this are "no limit": cgroup v1 writes `PAGE_COUNTER_MAX` pages
/// (0x7FFF_FFFF_FFFF_F000 bytes on 4 KiB pages) when unlimited.
const UNLIMITED_AT: u64 = 1 << 62;

/// Which cgroup interface the memory controller was found under.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CgroupVersion {
    /// One hierarchy per controller (`memory.limit_in_bytes`).
    V1,
    /// The unified hierarchy (`memory.max`).
    V2,
}

/// The memory controller's view of this process.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CgroupMemory {
    /// v1 or v2.
    pub version: CgroupVersion,
    /// The cgroup as `/proc/self/cgroup` names it.
    pub path: String,
    /// The directory holding its control files.
    pub dir: PathBuf,
    /// The tightest limit on the path to the root; `None` when nothing limits us.
    pub limit_bytes: Option<u64>,
    /// The directory whose limit is the tightest.
    pub limited_by: Option<PathBuf>,
    /// Memory charged to the cgroup now (page cache included, as the kernel counts it).
    pub usage_bytes: Option<u64>,
}

/// Reads cgroup state below a filesystem root: `/` on a live system, a fixture directory
/// in tests.
#[derive(Debug, Clone)]
pub struct Cgroups {
    root: PathBuf,
}

#[derive(Debug)]
struct Membership {
    /// The v2 line: hierarchy 0 with an empty controller list.
    unified: bool,
    controllers: Vec<String>,
    path: String,
}

#[derive(Debug)]
struct Mount {
    root: String,
    point: String,
    fstype: String,
    options: Vec<String>,
}

impl CgroupMemory {
    /// The file holding the cgroup's current usage (`memory.current` or
    /// `memory.usage_in_bytes`), for readers that poll it.
    pub fn usage_path(&self) -> PathBuf {
        self.dir.join(match self.version {
            CgroupVersion::V1 => "memory.usage_in_bytes",
            CgroupVersion::V2 => "memory.current",
        })
    }
}

impl Default for Cgroups {
    fn default() -> Self {
        Self::system()
    }
}

impl Cgroups {
    /// The running system.
    pub fn system() -> Self {
        Self::at("/")
    }

    /// A tree laid out like `/` (with `proc/self/cgroup`, `proc/self/mountinfo` and the
    /// mounted hierarchies), for tests.
    pub fn at(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    fn file(&self, absolute: &str) -> PathBuf {
        self.root.join(absolute.trim_start_matches('/'))
    }

    /// The memory controller's limit and usage, or `None` when this system has no
    /// cgroup memory controller (non-Linux, or cgroups not mounted).
    pub fn memory(&self) -> Result<Option<CgroupMemory>> {
        let Some((version, path, dir, mount_point)) = self.locate("memory")? else {
            return Ok(None);
        };
        let limit_file = match version {
            CgroupVersion::V1 => "memory.limit_in_bytes",
            CgroupVersion::V2 => "memory.max",
        };
        let mut limit: Option<(u64, PathBuf)> = None;
        let mut consider = |value: Option<u64>, at: &Path| {
            if let Some(v) = value
                && limit.as_ref().is_none_or(|(best, _)| v < *best)
            {
                limit = Some((v, at.to_path_buf()));
            }
        };
        for level in dir.ancestors() {
            if !level.starts_with(&mount_point) {
                break;
            }
            let file = level.join(limit_file);
            // The root cgroup of a v2 hierarchy has no memory.max: nothing to read there.
            if file.exists() {
                consider(parse_limit(&file)?, level);
            }
        }
        if version == CgroupVersion::V1 {
            // Ancestors above a container's mount root are invisible, but the kernel
            // folds their limits into hierarchical_memory_limit.
            let stat = dir.join("memory.stat");
            if stat.exists() {
                let text = read_to_string(&stat)?;
                let value = text
                    .lines()
                    .find_map(|l| l.strip_prefix("hierarchical_memory_limit "))
                    .map(|v| parse_number(&stat, v))
                    .transpose()?;
                consider(value.filter(|&v| v < UNLIMITED_AT), &dir);
            }
        }
        let (limit_bytes, limited_by) = match limit {
            Some((v, at)) => (Some(v), Some(at)),
            None => (None, None),
        };
        let mut memory = CgroupMemory {
            version,
            path,
            dir,
            limit_bytes,
            limited_by,
            usage_bytes: None,
        };
        let usage_path = memory.usage_path();
        if usage_path.exists() {
            memory.usage_bytes = Some(parse_number(&usage_path, &read_to_string(&usage_path)?)?);
        }
        Ok(Some(memory))
    }

    /// The CPU bandwidth quota in cores (`cpu.max` or `cpu.cfs_quota_us`), `None` when
    /// unlimited or unknown.
    pub fn cpu_quota_cores(&self) -> Result<Option<f64>> {
        let Some((version, _, dir, mount_point)) = self.locate("cpu")? else {
            return Ok(None);
        };
        let mut tightest: Option<f64> = None;
        for level in dir.ancestors() {
            if !level.starts_with(&mount_point) {
                break;
            }
            let quota = match version {
                CgroupVersion::V2 => {
                    let file = level.join("cpu.max");
                    if !file.exists() {
                        continue;
                    }
                    let text = read_to_string(&file)?;
                    let mut fields = text.split_whitespace();
                    match (fields.next(), fields.next()) {
                        (Some("max"), _) | (None, _) => None,
                        (Some(q), Some(p)) => {
                            Some(parse_number(&file, q)? as f64 / parse_number(&file, p)? as f64)
                        }
                        (Some(_), None) => {
                            return Err(HwError::Parse {
                                path: file,
                                message: format!(
                                    "expected `QUOTA PERIOD`, found `{}`",
                                    text.trim()
                                ),
                            });
                        }
                    }
                }
                CgroupVersion::V1 => {
                    let qf = level.join("cpu.cfs_quota_us");
                    let pf = level.join("cpu.cfs_period_us");
                    if !qf.exists() || !pf.exists() {
                        continue;
                    }
                    let q = read_to_string(&qf)?;
                    if q.trim().starts_with('-') {
                        None
                    } else {
                        Some(
                            parse_number(&qf, &q)? as f64
                                / parse_number(&pf, &read_to_string(&pf)?)? as f64,
                        )
                    }
                }
            };
            if let Some(q) = quota {
                tightest = Some(tightest.map_or(q, |t: f64| t.min(q)));
            }
        }
        Ok(tightest)
    }

    /// Finds the hierarchy that carries `controller`: (version, cgroup path, its
    /// directory, the mount point that bounds the walk up).
    fn locate(
        &self,
        controller: &str,
    ) -> Result<Option<(CgroupVersion, String, PathBuf, PathBuf)>> {
        let cgroup_file = self.file("/proc/self/cgroup");
        let mountinfo_file = self.file("/proc/self/mountinfo");
        if !cgroup_file.exists() || !mountinfo_file.exists() {
            return Ok(None);
        }
        let memberships = parse_proc_cgroup(&cgroup_file, &read_to_string(&cgroup_file)?)?;
        let mounts = parse_mountinfo(&mountinfo_file, &read_to_string(&mountinfo_file)?)?;

        // v1 first: on a hybrid system the controller lives in its own v1 hierarchy
        // and the v2 mount alongside carries no controllers.
        let v1 = memberships
            .iter()
            .find(|m| m.controllers.iter().any(|c| c == controller))
            .and_then(|m| {
                mounts
                    .iter()
                    .find(|mnt| {
                        mnt.fstype == "cgroup" && mnt.options.iter().any(|o| o == controller)
                    })
                    .map(|mnt| (CgroupVersion::V1, m, mnt))
            });
        let v2 = || {
            memberships.iter().find(|m| m.unified).and_then(|m| {
                mounts
                    .iter()
                    .find(|mnt| mnt.fstype == "cgroup2")
                    .map(|mnt| (CgroupVersion::V2, m, mnt))
            })
        };
        let Some((version, membership, mount)) = v1.or_else(v2) else {
            return Ok(None);
        };
        let mount_point = self.file(&mount.point);
        // Our path is relative to the root of the hierarchy; the mount shows the
        // subtree starting at `mount.root` (a container sees only its own subtree).
        let relative = if mount.root == "/" {
            Some(membership.path.as_str())
        } else {
            membership.path.strip_prefix(mount.root.as_str())
        };
        let dir = relative
            .map(|r| mount_point.join(r.trim_start_matches('/')))
            .filter(|d| d.is_dir() && !membership.path.contains("/.."))
            .unwrap_or_else(|| mount_point.clone());
        Ok(Some((version, membership.path.clone(), dir, mount_point)))
    }
}

fn parse_number(path: &Path, text: &str) -> Result<u64> {
    text.trim().parse().map_err(|_| HwError::Parse {
        path: path.to_path_buf(),
        message: format!("expected a whole number, found `{}`", text.trim()),
    })
}

/// `max` or a huge number is no limit.
fn parse_limit(path: &Path) -> Result<Option<u64>> {
    let text = read_to_string(path)?;
    let text = text.trim();
    if text == "max" {
        return Ok(None);
    }
    let value = parse_number(path, text)?;
    Ok((value < UNLIMITED_AT).then_some(value))
}

/// Lines of `hierarchy-ID:controller-list:cgroup-path`; v2 has ID 0 and no controllers.
fn parse_proc_cgroup(path: &Path, text: &str) -> Result<Vec<Membership>> {
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|line| {
            let mut parts = line.splitn(3, ':');
            match (parts.next(), parts.next(), parts.next()) {
                (Some(id), Some(controllers), Some(cgroup_path)) => Ok(Membership {
                    unified: id == "0" && controllers.is_empty(),
                    controllers: controllers
                        .split(',')
                        .filter(|c| !c.is_empty())
                        // v1 named hierarchies (`name=systemd`) are not controllers.
                        .filter(|c| !c.starts_with("name="))
                        .map(str::to_owned)
                        .collect(),
                    path: cgroup_path.to_owned(),
                }),
                _ => Err(HwError::Parse {
                    path: path.to_path_buf(),
                    message: format!("expected `ID:CONTROLLERS:PATH`, found `{line}`"),
                }),
            }
        })
        .collect()
}

/// `ID PARENT MAJ:MIN ROOT POINT OPTIONS [OPTIONAL...] - FSTYPE SOURCE SUPER_OPTIONS`
fn parse_mountinfo(path: &Path, text: &str) -> Result<Vec<Mount>> {
    let mut mounts = Vec::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let bad = || HwError::Parse {
            path: path.to_path_buf(),
            message: format!("malformed mountinfo line `{line}`"),
        };
        let (left, right) = line.split_once(" - ").ok_or_else(bad)?;
        let left: Vec<&str> = left.split(' ').collect();
        let right: Vec<&str> = right.split(' ').collect();
        if left.len() < 6 || right.len() < 3 {
            return Err(bad());
        }
        mounts.push(Mount {
            root: unescape_octal(left[3]),
            point: unescape_octal(left[4]),
            fstype: right[0].to_owned(),
            options: right[2].split(',').map(str::to_owned).collect(),
        });
    }
    Ok(mounts)
}

/// mountinfo writes space, tab, newline and backslash as `\040`-style octal escapes.
fn unescape_octal(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && i + 3 < bytes.len()
            // At most \377: a larger escape is not a byte, so it stays as written.
            && (b'0'..=b'3').contains(&bytes[i + 1])
            && bytes[i + 2..i + 4]
                .iter()
                .all(|b| (b'0'..=b'7').contains(b))
        {
            out.push(
                (bytes[i + 1] - b'0') * 64 + (bytes[i + 2] - b'0') * 8 + (bytes[i + 3] - b'0'),
            );
            i += 4;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_escapes_are_undone() {
        assert_eq!(unescape_octal(r"/mnt/my\040disk"), "/mnt/my disk");
        assert_eq!(unescape_octal(r"/plain"), "/plain");
        assert_eq!(unescape_octal(r"/end\04"), r"/end\04");
        assert_eq!(unescape_octal(r"/not\777a\byte"), r"/not\777a\byte");
    }

    #[test]
    fn proc_cgroup_lines_split_controllers() {
        let text = "12:memory:/docker/abc\n11:cpu,cpuacct:/docker/abc\n1:name=systemd:/init.scope\n0::/user.slice\n";
        let m = parse_proc_cgroup(Path::new("cgroup"), text).unwrap();
        assert_eq!(m.len(), 4);
        assert_eq!(m[0].controllers, ["memory"]);
        assert_eq!(m[1].controllers, ["cpu", "cpuacct"]);
        assert!(m[2].controllers.is_empty() && !m[2].unified);
        assert!(m[3].unified);
        assert_eq!(m[3].path, "/user.slice");
    }

    #[test]
    fn malformed_lines_are_errors_naming_the_file() {
        let err = parse_proc_cgroup(Path::new("/proc/self/cgroup"), "garbage").unwrap_err();
        assert!(err.to_string().contains("/proc/self/cgroup"), "{err}");
        let err = parse_mountinfo(Path::new("mi"), "1 2 3").unwrap_err();
        assert!(err.to_string().contains("mi"), "{err}");
    }
}
