//! The process's CPU quota from its cgroup (v2 `cpu.max`, or v1 `cpu.cfs_quota_us` and
//! `cpu.cfs_period_us`): a container limited to 1.5 CPUs on a 64-CPU host should not
//! start 64 pinned shard threads.

use std::path::{Path, PathBuf};

/// CPUs the quota allows, rounded up (`None`: no quota, or none found).
pub fn cpu_quota() -> Option<usize> {
    let cgroup = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    quota_from(&cgroup, Path::new("/sys/fs/cgroup"), |p| {
        std::fs::read_to_string(p).ok()
    })
}

/// The quota for `/proc/self/cgroup` contents `cgroup`, reading files under `root`
/// with `read` (a seam for tests).
fn quota_from(cgroup: &str, root: &Path, read: impl Fn(&Path) -> Option<String>) -> Option<usize> {
    for line in cgroup.lines() {
        let mut parts = line.splitn(3, ':');
        let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
        let rel = path.trim_start_matches('/');
        if controllers.is_empty() {
            // cgroup v2: the nearest `cpu.max` up the tree that sets a quota.
            let mut dir: PathBuf = root.join(rel);
            loop {
                if let Some(n) = read(&dir.join("cpu.max")).and_then(|s| parse_v2(&s)) {
                    return Some(n);
                }
                if dir == root || !dir.pop() {
                    break;
                }
            }
        } else if controllers.split(',').any(|c| c == "cpu") {
            for mount in [controllers, "cpu", "cpu,cpuacct"] {
                let dir = root.join(mount).join(rel);
                let quota = read(&dir.join("cpu.cfs_quota_us"));
                let period = read(&dir.join("cpu.cfs_period_us"));
                if let (Some(q), Some(p)) = (quota, period) {
                    return parse_v1(&q, &p);
                }
            }
        }
    }
    None
}

/// `cpu.max`: "max 100000" (no quota) or "<quota> <period>".
fn parse_v2(s: &str) -> Option<usize> {
    let mut it = s.split_whitespace();
    let (q, p) = (it.next()?, it.next()?);
    ratio(q.parse().ok()?, p.parse().ok()?)
}

/// `cpu.cfs_quota_us` (-1: no quota) and `cpu.cfs_period_us`.
fn parse_v1(q: &str, p: &str) -> Option<usize> {
    let q: i64 = q.trim().parse().ok()?;
    ratio(u64::try_from(q).ok()?, p.trim().parse().ok()?)
}

fn ratio(quota: u64, period: u64) -> Option<usize> {
    if quota == 0 || period == 0 {
        return None;
    }
    Some(quota.div_ceil(period).max(1) as usize)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn files(f: &[(&str, &str)]) -> impl Fn(&Path) -> Option<String> {
        let m: HashMap<PathBuf, String> = f
            .iter()
            .map(|(p, s)| (PathBuf::from(p), s.to_string()))
            .collect();
        move |p| m.get(p).cloned()
    }

    #[test]
    fn v2_quota_is_read_from_the_nearest_cpu_max_and_rounded_up() {
        let root = Path::new("/cg");
        let read = files(&[("/cg/app/svc/cpu.max", "150000 100000\n")]);
        assert_eq!(quota_from("0::/app/svc\n", root, &read), Some(2));
        // Set on the parent only.
        let read = files(&[
            ("/cg/app/svc/cpu.max", "max 100000\n"),
            ("/cg/app/cpu.max", "50000 100000\n"),
        ]);
        assert_eq!(quota_from("0::/app/svc\n", root, &read), Some(1));
        let read = files(&[("/cg/cpu.max", "max 100000\n")]);
        assert_eq!(quota_from("0::/\n", root, &read), None);
    }

    #[test]
    fn v1_quota_is_read_from_the_cpu_controller() {
        let root = Path::new("/cg");
        let read = files(&[
            ("/cg/cpu,cpuacct/docker/x/cpu.cfs_quota_us", "300000\n"),
            ("/cg/cpu,cpuacct/docker/x/cpu.cfs_period_us", "100000\n"),
        ]);
        let cgroup = "4:memory:/docker/x\n3:cpu,cpuacct:/docker/x\n";
        assert_eq!(quota_from(cgroup, root, &read), Some(3));
        let read = files(&[
            ("/cg/cpu/cpu.cfs_quota_us", "-1\n"),
            ("/cg/cpu/cpu.cfs_period_us", "100000\n"),
        ]);
        assert_eq!(quota_from("1:cpu:/\n", root, &read), None);
        assert_eq!(quota_from("garbage", root, &read), None);
    }
}
