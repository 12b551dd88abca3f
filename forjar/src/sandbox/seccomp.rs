//! The seccomp filter every build runs under: no setuid or setgid bits, no extended attributes.
//!
//! A build's outputs must not carry privileges or metadata that the tree digest does not cover.
//! `chmod`-family calls that set `S_ISUID` or `S_ISGID` fail with `EPERM`; `*setxattr` calls
//! fail with `ENOTSUP`, as on a filesystem without xattrs. The filter also covers the 32-bit
//! x86 ABI on x86_64 hosts, and refuses every x32 call, so that neither is a way around it.

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

/// A syscall the filter restricts.
#[derive(Clone, Copy)]
enum Rule {
    /// Refuse with `EPERM` when argument `arg` has the setuid or setgid bit.
    ModeBits { nr: u32, arg: u32 },
    /// Refuse with `ENOTSUP`.
    NotSupported { nr: u32 },
}

/// The rules of one ABI: (audit arch, rules).
fn abis() -> Vec<(u32, Vec<Rule>)> {
    use Rule::*;
    let xattr = |nrs: [u32; 4]| nrs.map(|nr| NotSupported { nr });
    // fchmodat2 is 452 and setxattrat 463 on every architecture.
    let x86_64 = [
        vec![
            ModeBits { nr: 90, arg: 1 },
            ModeBits { nr: 91, arg: 1 },
            ModeBits { nr: 268, arg: 2 },
            ModeBits { nr: 452, arg: 2 },
        ],
        xattr([188, 189, 190, 463]).to_vec(),
    ]
    .concat();
    let i386 = [
        vec![
            ModeBits { nr: 15, arg: 1 },
            ModeBits { nr: 94, arg: 1 },
            ModeBits { nr: 306, arg: 2 },
            ModeBits { nr: 452, arg: 2 },
        ],
        xattr([226, 227, 228, 463]).to_vec(),
    ]
    .concat();
    let aarch64 = [
        vec![
            ModeBits { nr: 52, arg: 1 },
            ModeBits { nr: 53, arg: 2 },
            ModeBits { nr: 452, arg: 2 },
        ],
        xattr([5, 6, 7, 463]).to_vec(),
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

/// The rules of one ABI, assuming the syscall number is loaded.
fn section(rules: &[Rule], x86_64: bool) -> Vec<libc::sock_filter> {
    let mut program = Vec::new();
    if x86_64 {
        // x32 calls carry this bit; refuse them all rather than filter a second numbering.
        program.push(jump(JGE_K, X32_SYSCALL_BIT, 0, 1));
        program.push(ret_errno(libc::EPERM));
    }
    for rule in rules {
        match *rule {
            Rule::ModeBits { nr, arg } => {
                program.push(jump(JEQ_K, nr, 0, 4));
                program.push(stmt(LD_W_ABS, offset_arg(arg)));
                program.push(jump(JSET_K, S_ISUID | S_ISGID, 0, 1));
                program.push(ret_errno(libc::EPERM));
                program.push(allow());
            }
            Rule::NotSupported { nr } => {
                program.push(jump(JEQ_K, nr, 0, 1));
                program.push(ret_errno(libc::ENOTSUP));
            }
        }
    }
    program.push(allow());
    program
}

/// The whole filter: dispatch on the architecture, then each ABI's section. An architecture
/// without rules is allowed through; the kernel only reports the host's ABIs.
pub(crate) fn program() -> Vec<libc::sock_filter> {
    let sections: Vec<(u32, Vec<libc::sock_filter>)> = abis()
        .into_iter()
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
    program.push(allow());
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
