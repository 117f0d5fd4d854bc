//! vCPU thread affinity: Xen's hard affinity is the thread's `sched_setaffinity` mask; soft
//! affinity (a preference Linux has no notion of) decides where the thread starts.

/// Largest CPU number a mask can name (`CPU_SETSIZE`).
pub const MAX_CPU: u32 = 1024;

type CpuMask = [u64; MAX_CPU as usize / 64];

fn cpu_set(cpus: &[u32]) -> CpuMask {
    let mut set: CpuMask = [0; MAX_CPU as usize / 64];
    if cpus.is_empty() {
        set.fill(u64::MAX);
    } else {
        for &c in cpus.iter().filter(|c| **c < MAX_CPU) {
            set[c as usize / 64] |= 1 << (c % 64);
        }
    }
    set
}

/// Restricts thread `tid` (0 = the calling thread) to `cpus` (empty = every CPU).
/// Fails with `EINVAL` when no CPU of the mask is online.
pub fn set(tid: i32, cpus: &[u32]) -> std::io::Result<()> {
    let set = cpu_set(cpus);
    // SAFETY: sched_setaffinity reads `size_of_val(&set)` bytes from a live local bit array
    // laid out like the kernel's cpumask (native-endian unsigned longs).
    let r = unsafe {
        libc::syscall(
            libc::SYS_sched_setaffinity,
            tid,
            std::mem::size_of_val(&set),
            set.as_ptr(),
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// The CPUs thread `tid` (0 = the calling thread) may run on.
pub fn get(tid: i32) -> std::io::Result<Vec<u32>> {
    let mut set: CpuMask = [0; MAX_CPU as usize / 64];
    // SAFETY: sched_getaffinity writes at most `size_of_val(&set)` bytes into the local array.
    let r = unsafe {
        libc::syscall(
            libc::SYS_sched_getaffinity,
            tid,
            std::mem::size_of_val(&set),
            set.as_mut_ptr(),
        )
    };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok((0..MAX_CPU)
        .filter(|c| set[*c as usize / 64] & (1 << (c % 64)) != 0)
        .collect())
}

/// The CPUs where a thread with `hard` and `soft` affinity should start: their intersection
/// when it is not empty (an empty list means every CPU), else `None` (no preference applies).
pub fn placement(hard: &[u32], soft: &[u32]) -> Option<Vec<u32>> {
    if soft.is_empty() {
        return None;
    }
    let both: Vec<u32> = if hard.is_empty() {
        soft.to_vec()
    } else {
        soft.iter().copied().filter(|c| hard.contains(c)).collect()
    };
    (!both.is_empty()).then_some(both)
}

/// Applies affinity to the calling thread: first to the soft placement (the kernel migrates the
/// thread there at once), then widens to the hard mask; the load balancer leaves a thread where it
/// is unless there is a reason to move it, so soft affinity acts as the initial placement.
pub fn apply_self(hard: &[u32], soft: &[u32]) -> std::io::Result<()> {
    if let Some(p) = placement(hard, soft) {
        if let Err(e) = set(0, &p) {
            tracing::warn!("soft affinity {p:?}: {e}");
        }
    }
    set(0, hard)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placement_is_the_intersection() {
        assert_eq!(placement(&[], &[]), None);
        assert_eq!(placement(&[0, 1], &[]), None);
        assert_eq!(placement(&[], &[1]), Some(vec![1]));
        assert_eq!(placement(&[0, 1, 2], &[1, 3]), Some(vec![1]));
        assert_eq!(placement(&[0], &[1]), None);
    }

    #[test]
    fn set_and_get_on_this_thread() {
        std::thread::spawn(|| {
            let all = get(0).unwrap();
            assert!(!all.is_empty());
            set(0, &[all[0]]).unwrap();
            assert_eq!(get(0).unwrap(), vec![all[0]]);
            // No online CPU in the mask.
            assert!(set(0, &[MAX_CPU - 1]).is_err() || all.contains(&(MAX_CPU - 1)));
            set(0, &[]).unwrap();
            assert_eq!(get(0).unwrap(), all);
        })
        .join()
        .unwrap();
    }
}
