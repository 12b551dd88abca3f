//! How a systemd unit stands, in words, for an activation's error: its state and systemd's
//! result, how its main process last ended, how often systemd restarted it, and its last log
//! lines. The state comes from `systemctl show`, which a log full of automatic restarts does not
//! hide; `systemctl`'s own "see `journalctl -xeu`" names a command to run on a host that has
//! already been rolled back.

use std::collections::BTreeMap;
use std::process::{Command, Stdio};

/// The properties [`describe`] reads.
const PROPERTIES: &str =
    "--property=ActiveState,SubState,Result,ExecMainCode,ExecMainStatus,NRestarts";

/// How many of the unit's log lines an error carries.
const LOG_LINES: &str = "8";

/// Unit `name`'s state and last log lines, as [`describe`] words them.
pub(super) fn report(name: &str) -> String {
    let show = Command::new("systemctl")
        .args(["show", PROPERTIES, "--", name])
        .stdin(Stdio::null())
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    let log = Command::new("journalctl")
        .args(["--no-pager", "-n", LOG_LINES, "-o", "cat", "-u", name])
        .stdin(Stdio::null())
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    describe(&show, &log)
}

/// Words `show` (`systemctl show`'s `Key=value` lines) and `log` (the unit's last log lines):
/// "it is failed/failed (result exit-code); its main process last exited with status 1/FAILURE;
/// systemd restarted it 5 times; its last log lines: ...".
pub(super) fn describe(show: &str, log: &str) -> String {
    let properties: BTreeMap<&str, &str> = show
        .lines()
        .filter_map(|line| line.split_once('='))
        .collect();
    let get = |key| properties.get(key).copied().unwrap_or_default();
    let mut parts = Vec::new();
    if !get("ActiveState").is_empty() {
        let mut state = format!("it is {}/{}", get("ActiveState"), get("SubState"));
        if !matches!(get("Result"), "" | "success") {
            state.push_str(&format!(" (result {})", get("Result")));
        }
        parts.push(state);
    }
    let status: Option<i32> = get("ExecMainStatus").parse().ok();
    // ExecMainCode is how the main process last ended: CLD_EXITED, CLD_KILLED or CLD_DUMPED.
    match (get("ExecMainCode"), status) {
        ("1", Some(code)) => parts.push(format!(
            "its main process last exited with status {}",
            exit_status(code)
        )),
        ("2" | "3", Some(signal)) => parts.push(format!(
            "its main process was last killed by signal {}",
            signal_name(signal)
        )),
        _ => {}
    }
    match get("NRestarts").parse::<u64>() {
        Ok(0) | Err(_) => {}
        Ok(1) => parts.push("systemd restarted it once".into()),
        Ok(n) => parts.push(format!("systemd restarted it {n} times")),
    }
    if !log.is_empty() {
        parts.push(format!("its last log lines:\n{log}"));
    }
    parts.join("; ")
}

/// An exit status with the name systemd gives it (systemd.exec(5), "Process Exit Codes"):
/// `203/EXEC` says the program could not be executed, `217/USER` that its user is unknown.
fn exit_status(code: i32) -> String {
    let name = match code {
        0 => "SUCCESS",
        1 => "FAILURE",
        2 => "INVALIDARGUMENT",
        3 => "NOTIMPLEMENTED",
        4 => "NOPERMISSION",
        5 => "NOTINSTALLED",
        6 => "NOTCONFIGURED",
        7 => "NOTRUNNING",
        200 => "CHDIR",
        201 => "NICE",
        202 => "FDS",
        203 => "EXEC",
        204 => "MEMORY",
        205 => "LIMITS",
        206 => "OOM_ADJUST",
        207 => "SIGNAL_MASK",
        208 => "STDIN",
        209 => "STDOUT",
        210 => "CHROOT",
        211 => "IOPRIO",
        212 => "TIMERSLACK",
        213 => "SECUREBITS",
        214 => "SETSCHEDULER",
        215 => "CPUAFFINITY",
        216 => "GROUP",
        217 => "USER",
        218 => "CAPABILITIES",
        219 => "CGROUP",
        220 => "SETSID",
        221 => "CONFIRM",
        222 => "STDERR",
        224 => "PAM",
        225 => "NETWORK",
        226 => "NAMESPACE",
        227 => "NO_NEW_PRIVILEGES",
        228 => "SECCOMP",
        229 => "SELINUX_CONTEXT",
        230 => "PERSONALITY",
        231 => "APPARMOR_PROFILE",
        232 => "ADDRESS_FAMILIES",
        233 => "RUNTIME_DIRECTORY",
        235 => "CHOWN",
        236 => "SMACK_PROCESS_LABEL",
        237 => "KEYRING",
        238 => "STATE_DIRECTORY",
        239 => "CACHE_DIRECTORY",
        240 => "LOGS_DIRECTORY",
        241 => "CONFIGURATION_DIRECTORY",
        242 => "NUMA_POLICY",
        243 => "CREDENTIALS",
        245 => "BPF",
        _ => return code.to_string(),
    };
    format!("{code}/{name}")
}

/// A signal's number with its name: `9/SIGKILL`.
fn signal_name(number: i32) -> String {
    match nix::sys::signal::Signal::try_from(number) {
        Ok(signal) => format!("{number}/{}", signal.as_str()),
        Err(_) => number.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::describe;

    #[test]
    fn a_unit_restarted_until_systemd_gave_up_is_described_by_its_last_exit_not_its_log() {
        let show = "Result=exit-code\nNRestarts=5\nExecMainCode=1\nExecMainStatus=1\n\
                    ActiveState=failed\nSubState=failed\n";
        let log = "hello.service: Start request repeated too quickly.";
        assert_eq!(
            describe(show, log),
            "it is failed/failed (result exit-code); its main process last exited with status \
             1/FAILURE; systemd restarted it 5 times; its last log lines:\n\
             hello.service: Start request repeated too quickly."
        );
    }

    #[test]
    fn a_program_that_cannot_be_executed_or_was_killed_is_named_as_systemd_names_it() {
        let exec = "ActiveState=failed\nSubState=failed\nResult=exit-code\nExecMainCode=1\n\
                    ExecMainStatus=203\nNRestarts=0\n";
        assert_eq!(
            describe(exec, ""),
            "it is failed/failed (result exit-code); its main process last exited with status 203/EXEC"
        );
        let killed = "ActiveState=failed\nSubState=failed\nResult=signal\nExecMainCode=2\n\
                      ExecMainStatus=9\nNRestarts=1\n";
        assert_eq!(
            describe(killed, ""),
            "it is failed/failed (result signal); its main process was last killed by signal \
             9/SIGKILL; systemd restarted it once"
        );
    }

    #[test]
    fn a_unit_that_never_ran_or_an_unanswered_query_says_only_what_is_known() {
        let never = "ActiveState=inactive\nSubState=dead\nResult=success\nExecMainCode=0\n\
                     ExecMainStatus=0\nNRestarts=0\n";
        assert_eq!(describe(never, ""), "it is inactive/dead");
        assert_eq!(describe("", "a line"), "its last log lines:\na line");
        assert_eq!(describe("", ""), "");
    }
}
