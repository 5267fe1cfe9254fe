//! Confined isolation `none` (Landlock, seccomp, no privileges), against the
//! real kernel: what a task's commands can and cannot reach.

use std::path::Path;

use fabric_runtime::confine::{ConfineConfig, Confinement, landlock_abi};
use fabric_runtime::sandbox::HelperCommand;
use fabric_runtime::{ShellJob, ShellOutcome};

/// Skips (loudly) where the kernel has no Landlock: nothing to test there
/// but the error, which `unavailable_confinement_says_what_to_do` covers.
/// `trampoline`: commands start through the helper's `confine` mode (what
/// the fabric does), else the locks are set in a `pre_exec` hook.
fn confinement(session: &Path, trampoline: bool) -> Option<Confinement> {
    if let Err(reason) = landlock_abi() {
        eprintln!("SKIPPED: no Landlock: {reason}");
        return None;
    }
    let confinement = Confinement::new(&ConfineConfig::default(), session).unwrap();
    Some(if trampoline {
        confinement.with_trampoline(HelperCommand::new(env!(
            "CARGO_BIN_EXE_fabric-sandbox-init"
        )))
    } else {
        confinement
    })
}

async fn run(confinement: &Confinement, workdir: &Path, command: &str) -> ShellOutcome {
    let job = ShellJob::new(vec![command.to_owned()], workdir.to_path_buf());
    confinement
        .run_shell(job, None, std::future::pending())
        .await
        .unwrap()
}

#[tokio::test]
async fn confined_commands_see_system_dirs_and_their_workdir_only() {
    for trampoline in [false, true] {
        commands_see_system_dirs_and_their_workdir_only(trampoline).await;
    }
}

async fn commands_see_system_dirs_and_their_workdir_only(trampoline: bool) {
    let outside = tempfile::tempdir().unwrap();
    std::fs::write(outside.path().join("secret"), "s3cr3t").unwrap();
    let session = tempfile::tempdir().unwrap();
    let Some(confinement) = confinement(session.path(), trampoline) else {
        return;
    };
    let task = session.path().join("t1");
    let other_task = session.path().join("t0");
    std::fs::create_dir(&other_task).unwrap();

    // Ordinary work: programs from /usr, its own files, pipes, /dev/null.
    let ok = run(
        &confinement,
        &task,
        "echo hi > f && cat f | tr a-z A-Z && ls /usr/bin >/dev/null && mkdir -p d/e && mv f d/e/g && cat d/e/g && echo $TMPDIR && touch $TMPDIR/x",
    )
    .await;
    assert!(ok.success(), "{ok:?}");
    assert!(ok.stdout.starts_with("HI\nhi\n"), "{ok:?}");

    let secret = outside.path().join("secret");
    let denied = [
        format!("cat {}", secret.display()),
        format!("ls {}", outside.path().display()),
        format!("touch {}/new", outside.path().display()),
        format!("touch {}/new", other_task.display()),
        "touch /tmp/confined-escape".to_owned(),
        "cat /etc/shadow".to_owned(),
        // The fabric (this test process) is outside the Landlock domain.
        format!("cat /proc/{}/environ", std::process::id()),
        "cat /proc/$PPID/environ".to_owned(),
        // Unix sockets by path are out (Docker's, a database's).
        "python3 -c 'import socket; socket.socket(socket.AF_UNIX).connect(\"/var/run/docker.sock\")'"
            .to_owned(),
    ];
    for command in denied {
        let out = run(&confinement, &task, &command).await;
        assert!(
            !out.success(),
            "{command} should fail (trampoline {trampoline}): {out:?}"
        );
        assert!(!out.stdout.contains("s3cr3t"), "{command}: {out:?}");
    }
    assert!(!Path::new("/tmp/confined-escape").exists());
    assert!(!other_task.join("new").exists());
    // A sibling directory named like the workdir's prefix is not inside it.
    assert_eq!(std::fs::read_dir(outside.path()).unwrap().count(), 1);
}

#[tokio::test]
async fn confined_program_cannot_read_the_fabric_environment() {
    for trampoline in [false, true] {
        program_cannot_read_the_fabric_environment(trampoline).await;
    }
}

async fn program_cannot_read_the_fabric_environment(trampoline: bool) {
    let session = tempfile::tempdir().unwrap();
    let Some(confinement) = confinement(session.path(), trampoline) else {
        return;
    };
    let workdir = session.path().join("program");
    std::fs::create_dir(&workdir).unwrap();
    let mut program = fabric_runtime::spawn_program(
        &format!(
            "cat /proc/{}/environ > leaked 2>err; echo $? > code",
            std::process::id()
        ),
        &workdir,
        &[],
        Some(&confinement),
    )
    .unwrap();
    let exit = program.wait().await.unwrap();
    assert_eq!(exit.code, Some(0));
    assert_eq!(std::fs::read_to_string(workdir.join("leaked")).unwrap(), "");
    assert_ne!(
        std::fs::read_to_string(workdir.join("code"))
            .unwrap()
            .trim(),
        "0"
    );
}

#[test]
fn unavailable_confinement_says_what_to_do() {
    let err = fabric_runtime::RuntimeError::ConfinementUnavailable {
        reason: "this kernel has no Landlock".into(),
    };
    let text = err.to_string();
    assert!(text.contains("no Landlock"), "{text}");
    assert!(text.contains("as_fabric_user"), "{text}");
}

/// Issue #16, item 2 at level `none`: what a task's command starts ends with
/// it, even a process that left its process group (`setsid`, double fork),
/// and the command's own status still comes through the keeper.
#[tokio::test]
async fn nothing_a_confined_command_starts_outlives_it() {
    let session = tempfile::tempdir().unwrap();
    let Some(confinement) = confinement(session.path(), true) else {
        return;
    };
    let task = session.path().join("t1");
    // A duration no other process sleeps, to find them by.
    let marker = format!("sleep 300.{}", std::process::id());
    let outcome = run(
        &confinement,
        &task,
        &format!(
            "setsid {marker} </dev/null >/dev/null 2>&1 & \
             (setsid sh -c '{marker} & {marker}' </dev/null >/dev/null 2>&1 &); \
             sleep 0.2; pgrep -c -f '^{marker}'; exit 3"
        ),
    )
    .await;
    assert_eq!(outcome.exit_code, Some(3), "{outcome:?}");
    assert_eq!(outcome.stdout, "3\n", "all three ran: {outcome:?}");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let left = std::process::Command::new("pgrep")
            .args(["-f", &marker])
            .output()
            .unwrap();
        if left.stdout.is_empty() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "escaped processes outlived their command: {}",
            String::from_utf8_lossy(&left.stdout)
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let outcome = run(&confinement, &task, "kill -TERM $$").await;
    assert_eq!(outcome.signal, Some(libc::SIGTERM), "{outcome:?}");
}
