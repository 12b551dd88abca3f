//! The seccomp filter every build runs under: no setuid or setgid bits, no extended attributes,
//! no keyrings, and no call whose arguments the filter cannot see.
//!
//! A build's outputs must not carry privileges or metadata that the tree digest does not cover.
//! `chmod`-family calls that set `S_ISUID` or `S_ISGID` fail with `EPERM`, and so do the calls
//! that create a file with those bits (`open`/`openat` with `O_CREAT` or `O_TMPFILE`, `creat`,
//! `mknod`); `*setxattr` calls fail with `ENOTSUP`, as on a filesystem without xattrs. The
//! kernel keyrings (`add_key`, `request_key`, `keyctl`) are refused, so a build can neither read
//! nor plant keys. `io_uring` would perform all of the above out of the filter's sight, and
//! `openat2` passes its mode in a structure the filter cannot read: both fail with `ENOSYS`, as
//! on a kernel without them, and libc falls back to `openat`. `ioctl` with `TIOCSTI` (push
//! bytes into a terminal's input, where the user's shell would read them after the build or an
//! `enter` shell ends) or `TIOCLINUX` fails with `EPERM`. The filter also covers the 32-bit
//! x86 ABI on x86_64 hosts, and refuses every x32 call, so that neither is a way around it; a
//! call of any other ABI the kernel runs (32-bit Arm on an aarch64 host) kills the build.

use nix::libc;

const S_ISUID: u32 = 0o4000;
const S_ISGID: u32 = 0o2000;

// From <linux/audit.h>.
const AUDIT_ARCH_X86_64: u32 = 0xC000_003E;
const AUDIT_ARCH_I386: u32 = 0x4000_0003;
const AUDIT_ARCH_AARCH64: u32 = 0xC000_00B7;
const X32_SYSCALL_BIT: u32 = 0x4000_0000;

// struct seccomp_data: int nr; __u32 arch; __u64 instruction_pointer; __u64 args[6].
const OFFSET_NR: u32 = 0;
const OFFSET_ARCH: u32 = 4;
const fn offset_arg(i: u32) -> u32 {
    16 + 8 * i
}

/// The terminal ioctls refused: `TIOCSTI` and `TIOCLINUX`.
const TIOCSTI: u32 = 0x5412;
const TIOCLINUX: u32 = 0x541C;

/// `O_CREAT | __O_TMPFILE`, the same on every architecture here.
const CREATES: u32 = 0o100 | 0o20_000_000;

/// A syscall the filter restricts.
#[derive(Clone, Copy)]
enum Rule {
    /// Refuse with `EPERM` when argument `arg` has the setuid or setgid bit.
    ModeBits { nr: u32, arg: u32 },
    /// Refuse with `EPERM` when the flags in argument `flags` create a file and the mode in
    /// argument `mode` has the setuid or setgid bit.
    CreateMode { nr: u32, flags: u32, mode: u32 },
    /// Refuse with `EPERM` the terminal ioctls that inject input (`TIOCSTI`, `TIOCLINUX`).
    TerminalInput { nr: u32 },
    /// Refuse with `ENOTSUP`.
    NotSupported { nr: u32 },
    /// Refuse with `ENOSYS`.
    Missing { nr: u32 },
}

/// The rules of one ABI: (audit arch, rules).
fn abis() -> Vec<(u32, Vec<Rule>)> {
    use Rule::*;
    let xattr = |nrs: [u32; 4]| nrs.map(|nr| NotSupported { nr });
    let missing = |nrs: [u32; 3]| nrs.map(|nr| Missing { nr });
    // The same numbers on every architecture: fchmodat2 452, openat2 437, and
    // io_uring_setup, io_uring_enter and io_uring_register 425 to 427.
    let common = [
        ModeBits { nr: 452, arg: 2 },
        Missing { nr: 437 },
        Missing { nr: 425 },
        Missing { nr: 426 },
        Missing { nr: 427 },
    ];
    let x86_64 = [
        vec![
            ModeBits { nr: 90, arg: 1 },
            ModeBits { nr: 91, arg: 1 },
            ModeBits { nr: 268, arg: 2 },
            CreateMode {
                nr: 2,
                flags: 1,
                mode: 2,
            },
            CreateMode {
                nr: 257,
                flags: 2,
                mode: 3,
            },
            ModeBits { nr: 85, arg: 1 },
            ModeBits { nr: 133, arg: 1 },
            ModeBits { nr: 259, arg: 2 },
            TerminalInput { nr: 16 },
        ],
        xattr([188, 189, 190, 463]).to_vec(),
        missing([248, 249, 250]).to_vec(),
        common.to_vec(),
    ]
    .concat();
    let i386 = [
        vec![
            ModeBits { nr: 15, arg: 1 },
            ModeBits { nr: 94, arg: 1 },
            ModeBits { nr: 306, arg: 2 },
            CreateMode {
                nr: 5,
                flags: 1,
                mode: 2,
            },
            CreateMode {
                nr: 295,
                flags: 2,
                mode: 3,
            },
            ModeBits { nr: 8, arg: 1 },
            ModeBits { nr: 14, arg: 1 },
            ModeBits { nr: 297, arg: 2 },
            TerminalInput { nr: 54 },
        ],
        xattr([226, 227, 228, 463]).to_vec(),
        missing([286, 287, 288]).to_vec(),
        common.to_vec(),
    ]
    .concat();
    let aarch64 = [
        vec![
            ModeBits { nr: 52, arg: 1 },
            ModeBits { nr: 53, arg: 2 },
            CreateMode {
                nr: 56,
                flags: 2,
                mode: 3,
            },
            ModeBits { nr: 33, arg: 2 },
            TerminalInput { nr: 29 },
        ],
        xattr([5, 6, 7, 463]).to_vec(),
        missing([217, 218, 219]).to_vec(),
        common.to_vec(),
    ]
    .concat();
    vec![
        (AUDIT_ARCH_X86_64, x86_64),
        (AUDIT_ARCH_I386, i386),
        (AUDIT_ARCH_AARCH64, aarch64),
    ]
}

fn stmt(code: u32, k: u32) -> libc::sock_filter {
    libc::sock_filter {
        code: code as u16,
        jt: 0,
        jf: 0,
        k,
    }
}

fn jump(code: u32, k: u32, jt: u8, jf: u8) -> libc::sock_filter {
    libc::sock_filter {
        code: code as u16,
        jt,
        jf,
        k,
    }
}

const LD_W_ABS: u32 = libc::BPF_LD | libc::BPF_W | libc::BPF_ABS;
const JEQ_K: u32 = libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K;
const JGE_K: u32 = libc::BPF_JMP | libc::BPF_JGE | libc::BPF_K;
const JSET_K: u32 = libc::BPF_JMP | libc::BPF_JSET | libc::BPF_K;
const RET_K: u32 = libc::BPF_RET | libc::BPF_K;

fn ret_errno(errno: i32) -> libc::sock_filter {
    stmt(
        RET_K,
        libc::SECCOMP_RET_ERRNO | (errno as u32 & libc::SECCOMP_RET_DATA),
    )
}

fn allow() -> libc::sock_filter {
    stmt(RET_K, libc::SECCOMP_RET_ALLOW)
}

impl Rule {
    /// The call the rule is about.
    fn nr(self) -> u32 {
        match self {
            Rule::ModeBits { nr, .. }
            | Rule::CreateMode { nr, .. }
            | Rule::TerminalInput { nr }
            | Rule::NotSupported { nr }
            | Rule::Missing { nr } => nr,
        }
    }

    /// The rule's instructions, assuming the call's number is loaded: a test of the number, whose
    /// "no" goes past the rest, then the verdict on the arguments.
    fn code(self) -> Vec<libc::sock_filter> {
        let body = match self {
            Rule::ModeBits { arg, .. } => vec![
                stmt(LD_W_ABS, offset_arg(arg)),
                jump(JSET_K, S_ISUID | S_ISGID, 0, 1),
                ret_errno(libc::EPERM),
                allow(),
            ],
            Rule::CreateMode { flags, mode, .. } => vec![
                stmt(LD_W_ABS, offset_arg(flags)),
                jump(JSET_K, CREATES, 0, 3),
                stmt(LD_W_ABS, offset_arg(mode)),
                jump(JSET_K, S_ISUID | S_ISGID, 0, 1),
                ret_errno(libc::EPERM),
                allow(),
            ],
            Rule::TerminalInput { .. } => vec![
                stmt(LD_W_ABS, offset_arg(1)),
                jump(JEQ_K, TIOCSTI, 2, 0),
                jump(JEQ_K, TIOCLINUX, 1, 0),
                allow(),
                ret_errno(libc::EPERM),
            ],
            Rule::NotSupported { .. } => vec![ret_errno(libc::ENOTSUP)],
            Rule::Missing { .. } => vec![ret_errno(libc::ENOSYS)],
        };
        let mut code = vec![jump(JEQ_K, self.nr(), 0, body.len() as u8)];
        code.extend(body);
        code
    }
}

/// The rules of one ABI, assuming the syscall number is loaded.
fn section(rules: &[Rule], x86_64: bool) -> Vec<libc::sock_filter> {
    let mut program = Vec::new();
    if x86_64 {
        // x32 calls carry this bit; refuse them all rather than filter a second numbering.
        program.push(jump(JGE_K, X32_SYSCALL_BIT, 0, 1));
        program.push(ret_errno(libc::EPERM));
    }
    let mut rules = rules.to_vec();
    rules.sort_by_key(|rule| rule.nr());
    program.extend(search(&rules));
    program
}

/// Rules this many or fewer are tried one after the other.
const RUN: usize = 3;

/// The rules `sorted` (by number, each number once) as a binary search on the call's number
/// down to runs of a few, each run tried in turn and ending in `allow`: a call that no rule
/// names passes some six comparisons rather than one per rule. The kernel runs the filter on
/// each call number of each ABI when it attaches it (to learn which calls it always allows),
/// and on each call of the build's that it does not always allow.
fn search(sorted: &[Rule]) -> Vec<libc::sock_filter> {
    if sorted.len() <= RUN {
        let mut code: Vec<_> = sorted.iter().flat_map(|rule| rule.code()).collect();
        code.push(allow());
        return code;
    }
    let (below, from) = sorted.split_at(sorted.len() / 2);
    let below = search(below);
    let skip = u8::try_from(below.len()).expect("half a section is shorter than 256 instructions");
    let mut code = vec![jump(JGE_K, from[0].nr(), skip, 0)];
    code.extend(below);
    code.extend(search(from));
    code
}

/// The audit architectures of the ABIs a build on this host may call with: the host's own and,
/// on x86_64, i386. Empty on a host the filter has no rules for.
const HOST_ABIS: &[u32] = if cfg!(target_arch = "x86_64") {
    &[AUDIT_ARCH_X86_64, AUDIT_ARCH_I386]
} else if cfg!(target_arch = "aarch64") {
    &[AUDIT_ARCH_AARCH64]
} else {
    &[]
};

/// The whole filter: dispatch on the architecture, then each of the host's ABIs' sections. A
/// call of another ABI kills the process: its numbers mean other calls, which the sections do
/// not know (on a host without rules, where there are no sections, every call is allowed).
pub(crate) fn program() -> Vec<libc::sock_filter> {
    program_for(HOST_ABIS)
}

fn program_for(host: &[u32]) -> Vec<libc::sock_filter> {
    let sections: Vec<(u32, Vec<libc::sock_filter>)> = abis()
        .into_iter()
        .filter(|(arch, _)| host.contains(arch))
        .map(|(arch, rules)| {
            let mut body = vec![stmt(LD_W_ABS, OFFSET_NR)];
            body.extend(section(&rules, arch == AUDIT_ARCH_X86_64));
            (arch, body)
        })
        .collect();
    let mut program = vec![stmt(LD_W_ABS, OFFSET_ARCH)];
    for (arch, body) in sections {
        let skip = u8::try_from(body.len()).expect("a section is shorter than 256 instructions");
        program.push(jump(JEQ_K, arch, 0, skip));
        program.extend(body);
    }
    program.push(match host.is_empty() {
        true => allow(),
        false => stmt(RET_K, libc::SECCOMP_RET_KILL_PROCESS),
    });
    program
}

/// Installs the filter on the calling thread. Needs `PR_SET_NO_NEW_PRIVS` first.
pub(crate) fn install(program: &[libc::sock_filter]) -> std::io::Result<()> {
    let prog = libc::sock_fprog {
        len: u16::try_from(program.len()).expect("the filter is shorter than 65536 instructions"),
        filter: program.as_ptr().cast_mut(),
    };
    // SAFETY: `prog` points at `program`, which outlives the call; the kernel copies the filter.
    let rc = unsafe {
        libc::prctl(
            libc::PR_SET_SECCOMP,
            libc::SECCOMP_MODE_FILTER,
            &prog as *const libc::sock_fprog,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What the kernel's filter returns for a call: the instructions `program_for` emits, run
    /// on a `struct seccomp_data` of `arch`, `nr` and `args`.
    fn verdict(program: &[libc::sock_filter], arch: u32, nr: u32, args: [u64; 6]) -> u32 {
        let mut data = Vec::with_capacity(64);
        data.extend(nr.to_ne_bytes());
        data.extend(arch.to_ne_bytes());
        data.extend(0u64.to_ne_bytes());
        for arg in args {
            data.extend(arg.to_ne_bytes());
        }
        let (mut pc, mut acc) = (0usize, 0u32);
        loop {
            let ins = program[pc];
            let code = u32::from(ins.code);
            let step = |taken: bool| 1 + usize::from(if taken { ins.jt } else { ins.jf });
            pc += match code {
                LD_W_ABS => {
                    let at = ins.k as usize;
                    acc = u32::from_ne_bytes(data[at..at + 4].try_into().unwrap());
                    1
                }
                JEQ_K => step(acc == ins.k),
                JGE_K => step(acc >= ins.k),
                JSET_K => step(acc & ins.k != 0),
                RET_K => return ins.k,
                other => panic!("instruction {other:#x} is not one the filter uses"),
            };
        }
    }

    fn errno(errno: i32) -> u32 {
        libc::SECCOMP_RET_ERRNO | errno as u32
    }

    /// What the rules say of a call, read directly.
    fn reference(rules: &[Rule], x86_64: bool, nr: u32, args: [u64; 6]) -> u32 {
        if x86_64 && nr >= X32_SYSCALL_BIT {
            return errno(libc::EPERM);
        }
        let arg = |i: u32| args[i as usize] as u32;
        let refused = |yes: bool| match yes {
            true => errno(libc::EPERM),
            false => libc::SECCOMP_RET_ALLOW,
        };
        match rules.iter().find(|rule| rule.nr() == nr) {
            None => libc::SECCOMP_RET_ALLOW,
            Some(&Rule::ModeBits { arg: a, .. }) => refused(arg(a) & (S_ISUID | S_ISGID) != 0),
            Some(&Rule::CreateMode { flags, mode, .. }) => {
                refused(arg(flags) & CREATES != 0 && arg(mode) & (S_ISUID | S_ISGID) != 0)
            }
            Some(Rule::TerminalInput { .. }) => refused(arg(1) == TIOCSTI || arg(1) == TIOCLINUX),
            Some(Rule::NotSupported { .. }) => errno(libc::ENOTSUP),
            Some(Rule::Missing { .. }) => errno(libc::ENOSYS),
        }
    }

    #[test]
    fn the_filter_says_of_every_call_what_its_rules_do() {
        let patterns: Vec<[u64; 6]> = [0, 0o755, 0o4755, 0o2000 | 0o100, 0o100, 0o20_000_000]
            .into_iter()
            .map(|v| [v; 6])
            .chain([
                [0, u64::from(TIOCSTI), 0, 0, 0, 0],
                [0, u64::from(TIOCLINUX), 0, 0, 0, 0],
                [0, 0, 0o100, 0o4000, 0, 0],
                [0, 0o100, 0o2755, 0, 0, 0],
            ])
            .collect();
        for (arch, rules) in abis() {
            let mut numbers: Vec<u32> = rules.iter().map(|rule| rule.nr()).collect();
            numbers.sort_unstable();
            numbers.dedup();
            assert_eq!(
                numbers.len(),
                rules.len(),
                "a call with two rules on {arch:#x}"
            );
            let host = match arch {
                AUDIT_ARCH_AARCH64 => &[AUDIT_ARCH_AARCH64][..],
                _ => &[AUDIT_ARCH_X86_64, AUDIT_ARCH_I386][..],
            };
            let program = program_for(host);
            let x86_64 = arch == AUDIT_ARCH_X86_64;
            for nr in (0..1024).chain([X32_SYSCALL_BIT | 2, X32_SYSCALL_BIT | 90]) {
                for &args in &patterns {
                    assert_eq!(
                        verdict(&program, arch, nr, args),
                        reference(&rules, x86_64, nr, args),
                        "arch {arch:#x}, call {nr}, arguments {args:?}"
                    );
                }
            }
        }
    }

    #[test]
    fn the_host_abis_are_filtered_and_every_other_one_killed() {
        let all = [AUDIT_ARCH_X86_64, AUDIT_ARCH_I386, AUDIT_ARCH_AARCH64];
        for host in [&all[..2], &all[2..]] {
            let program = program_for(host);
            assert!(program.len() < 256, "{} instructions", program.len());
            for &arch in &all {
                // getpid on x86_64 and i386 (39, 20), getppid on aarch64 (173): ordinary calls.
                let plain = [39, 20, 173];
                for nr in plain {
                    let got = verdict(&program, arch, nr, [0; 6]);
                    match host.contains(&arch) {
                        true => assert_eq!(got, libc::SECCOMP_RET_ALLOW, "{arch:#x} {nr}"),
                        false => assert_eq!(got, libc::SECCOMP_RET_KILL_PROCESS, "{arch:#x} {nr}"),
                    }
                }
            }
        }
        // 32-bit Arm, which an aarch64 kernel may run, has no section: its calls are killed.
        const AUDIT_ARCH_ARM: u32 = 0x4000_0028;
        let arm = verdict(
            &program_for(&all[2..]),
            AUDIT_ARCH_ARM,
            15,
            [0, 0o4755, 0, 0, 0, 0],
        );
        assert_eq!(arm, libc::SECCOMP_RET_KILL_PROCESS);
        // A host without rules gets a filter that allows everything.
        assert_eq!(
            verdict(&program_for(&[]), AUDIT_ARCH_ARM, 15, [0; 6]),
            libc::SECCOMP_RET_ALLOW
        );
    }

    #[test]
    fn setuid_modes_xattrs_and_x32_calls_are_refused_on_the_host_abis() {
        let x86 = program_for(&[AUDIT_ARCH_X86_64, AUDIT_ARCH_I386]);
        let call = |arch, nr, args| verdict(&x86, arch, nr, args);
        // chmod(path, 04755) and chmod(path, 0755); i386's chmod is 15.
        assert_eq!(
            call(AUDIT_ARCH_X86_64, 90, [0, 0o4755, 0, 0, 0, 0]),
            errno(libc::EPERM)
        );
        assert_eq!(
            call(AUDIT_ARCH_X86_64, 90, [0, 0o755, 0, 0, 0, 0]),
            libc::SECCOMP_RET_ALLOW
        );
        assert_eq!(
            call(AUDIT_ARCH_I386, 15, [0, 0o2755, 0, 0, 0, 0]),
            errno(libc::EPERM)
        );
        // openat(dir, path, O_CREAT, 04755), and the same mode without O_CREAT.
        assert_eq!(
            call(AUDIT_ARCH_X86_64, 257, [0, 0, 0o100, 0o4755, 0, 0]),
            errno(libc::EPERM)
        );
        assert_eq!(
            call(AUDIT_ARCH_X86_64, 257, [0, 0, 0, 0o4755, 0, 0]),
            libc::SECCOMP_RET_ALLOW
        );
        // setxattr, openat2, and an x32 call.
        assert_eq!(call(AUDIT_ARCH_X86_64, 188, [0; 6]), errno(libc::ENOTSUP));
        assert_eq!(call(AUDIT_ARCH_X86_64, 437, [0; 6]), errno(libc::ENOSYS));
        assert_eq!(
            call(AUDIT_ARCH_X86_64, X32_SYSCALL_BIT | 39, [0; 6]),
            errno(libc::EPERM)
        );
        // ioctl(fd, TIOCSTI) and an ordinary ioctl.
        assert_eq!(
            call(AUDIT_ARCH_X86_64, 16, [0, TIOCSTI as u64, 0, 0, 0, 0]),
            errno(libc::EPERM)
        );
        assert_eq!(
            call(AUDIT_ARCH_X86_64, 16, [0, 0x5401, 0, 0, 0, 0]),
            libc::SECCOMP_RET_ALLOW
        );
    }
}
