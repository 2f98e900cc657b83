//! What every command says about a store it cannot use (a directory that
//! does not exist, is a file or cannot be read; a `~` in a URL) and about a
//! checkpoint file that is empty or cut short: each names what is wrong and
//! where, and nothing is created or changed.

// Test code: helpers are `pub` for the test's modules, and a failed unwrap is a failed test.
#![allow(unreachable_pub, clippy::unwrap_used)]

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::{assert_code, json_checkpoint, output_within, run, spotbatch, stderr, stdout, Store};

/// Every command that reads or changes what a store holds, on `url`.
fn commands(url: &str) -> Vec<Vec<String>> {
    [
        vec!["list"],
        vec!["list", "--json"],
        vec!["show", "etl"],
        vec!["show", "etl", "--json"],
        vec!["skipped", "etl"],
        vec!["export", "etl", "--output", "/dev/null"],
        vec!["mark", "etl", "--status", "completed"],
        vec!["set-cursor", "etl", "1"],
        vec!["redrive", "etl"],
        vec!["reset", "etl", "--yes"],
    ]
    .into_iter()
    .map(|args| {
        let mut args: Vec<String> = args.into_iter().map(str::to_owned).collect();
        args.insert(1, url.to_owned());
        args
    })
    .collect()
}

fn run_owned(args: &[String]) -> std::process::Output {
    run(&args.iter().map(String::as_str).collect::<Vec<_>>())
}

/// Exit 74 (the store refused for good), naming the URL and `says`, never
/// "no checkpoint(s)", nothing on stdout.
#[track_caller]
fn assert_refused(out: &std::process::Output, args: &[String], url: &str, says: &str) {
    assert_code(out, 74);
    let err = stderr(out);
    assert!(
        err.contains(url) && err.contains(says) && err.contains("check the store URL"),
        "{args:?}: {err}"
    );
    assert!(!err.contains("no checkpoint"), "{args:?}: {err}");
    assert!(out.stdout.is_empty(), "{args:?}: {}", stdout(out));
}

#[test]
fn a_directory_that_does_not_exist_is_named_by_every_command_and_not_created() {
    let s = Store::new();
    let missing = s.path();
    let url = s.url();
    for args in commands(&url) {
        let out = run_owned(&args);
        assert_refused(
            &out,
            &args,
            &url,
            &format!("the directory {} does not exist", missing.display()),
        );
        assert!(!missing.exists(), "{args:?} created {}", missing.display());
    }

    // Relative: named as the absolute path it was looked for at.
    let mut cmd = spotbatch();
    cmd.current_dir(s.dir.path())
        .args(["show", "file://./ckpt", "etl"]);
    let out = output_within(cmd, Duration::from_secs(60));
    assert_code(&out, 74);
    assert!(
        stderr(&out).contains(&format!(
            "the directory {} does not exist",
            missing.display()
        )),
        "{}",
        stderr(&out)
    );

    // An existing directory without the job: "no checkpoint", exit 1.
    std::fs::create_dir(&missing).unwrap();
    let out = run(&["show", &url, "etl"]);
    assert_code(&out, 1);
    assert!(
        stderr(&out).contains(&format!("{url}: no checkpoint for job \"etl\"")),
        "{}",
        stderr(&out)
    );
    let out = run(&["list", &url]);
    assert_code(&out, 0);
    assert!(stdout(&out).contains("no checkpoints"), "{}", stdout(&out));
}

#[test]
fn import_creates_the_directory_as_a_run_does() {
    let from = Store::new();
    from.save(&json_checkpoint("etl", 1200, 5), None);
    let file = from.dir.path().join("etl.ckpt");
    let out = run(&[
        "export",
        &from.url(),
        "etl",
        "--output",
        file.to_str().unwrap(),
    ]);
    assert_code(&out, 0);

    let to = Store::new();
    let out = run(&[
        "import",
        &to.url(),
        "etl",
        "--input",
        file.to_str().unwrap(),
    ]);
    assert_code(&out, 0);
    assert_eq!(to.load("etl").unwrap().counters.chunks, 12);
}

#[test]
fn a_file_where_the_directory_should_be_is_named_by_every_command() {
    let s = Store::new();
    std::fs::write(s.path(), b"not a directory").unwrap();
    let url = s.url();
    for args in commands(&url) {
        let out = run_owned(&args);
        assert_refused(
            &out,
            &args,
            &url,
            &format!("{} is a file, not a directory", s.path().display()),
        );
    }
    // A directory under that file.
    let under = s.path().join("x");
    let url = format!("file://{}", under.display());
    let out = run(&["show", &url, "etl"]);
    assert_refused(
        &out,
        &[],
        &url,
        &format!(
            "{} lies under {}, which is a file, not a directory",
            under.display(),
            s.path().display()
        ),
    );
    assert_eq!(std::fs::read(s.path()).unwrap(), b"not a directory");
}

/// Run as `nobody` (root is never denied), on a directory only root may read.
#[test]
fn a_directory_that_cannot_be_read_is_named_by_every_command() {
    use std::os::unix::fs::MetadataExt;
    assert_eq!(
        std::fs::metadata("/proc/self").unwrap().uid(),
        0,
        "this test runs the command as another user: it needs root (CI runs as root)"
    );
    let s = Store::new();
    s.save(&json_checkpoint("etl", 1200, 5), None);
    let mode = |path: &Path, mode: u32| {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
    };
    mode(s.dir.path(), 0o755);
    mode(&s.path(), 0o700);
    let before = std::fs::read(s.file_of("etl")).unwrap();
    let url = s.url();
    for args in commands(&url) {
        let mut cmd = Command::new("setpriv");
        cmd.args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .arg(env!("CARGO_BIN_EXE_spotbatch"))
            .args(&args)
            .stdin(std::process::Stdio::null());
        let out = output_within(cmd, Duration::from_secs(60));
        assert_code(&out, 74);
        let err = stderr(&out);
        assert!(
            err.contains(&url)
                && err.contains(&format!("{}: Permission denied", s.path().display()))
                && err.contains("access denied"),
            "{args:?}: {err}"
        );
        assert!(!err.contains("no checkpoint"), "{args:?}: {err}");
    }
    assert_eq!(std::fs::read(s.file_of("etl")).unwrap(), before);
}

#[test]
fn a_tilde_in_a_file_url_gets_the_path_to_write_instead() {
    let s = Store::new();
    for url in ["file://~/ckpt", "file:///~/ckpt", "file://./~/ckpt"] {
        let mut cmd = spotbatch();
        cmd.current_dir(s.dir.path())
            .env("HOME", "/home/ops")
            .args(["list", url]);
        let out = output_within(cmd, Duration::from_secs(60));
        assert_code(&out, 78);
        let err = stderr(&out);
        assert!(
            err.contains(url)
                && err.contains("`~` is not expanded in a store URL")
                && err.contains("file:///home/ops/ckpt")
                && err.contains("file://./ckpt"),
            "{url}: {err}"
        );
        let hint = &err[err.find("write the absolute path").expect(&err)..];
        assert!(!hint.contains('~'), "{url}: {hint}");
    }
    // Without HOME, no path is made up.
    let mut cmd = spotbatch();
    cmd.env_remove("HOME").args(["list", "file://~/ckpt"]);
    let out = output_within(cmd, Duration::from_secs(60));
    assert_code(&out, 78);
    assert!(
        stderr(&out).contains("file:///path/of/your/home/ckpt"),
        "{}",
        stderr(&out)
    );
    assert_eq!(std::fs::read_dir(s.dir.path()).unwrap().count(), 0);
}

/// An empty checkpoint file (a `touch`, a copy cut short by a full disk),
/// and ones cut short inside or after the header: each named for what it
/// is, with the file, and what to do; left as they are.
#[test]
fn an_empty_or_truncated_checkpoint_file_says_which_and_what_to_do() {
    let s = Store::new();
    s.save(&json_checkpoint("etl", 1200, 5), None);
    let path = s.file_of("etl");
    let whole = std::fs::read(&path).unwrap();
    for (bytes, says) in [
        (vec![], "checkpoint is empty (0 bytes)".to_owned()),
        (
            whole[..10].to_vec(),
            "checkpoint is truncated: 10 bytes, shorter than its 14-byte header".to_owned(),
        ),
        (
            whole[..whole.len() / 2].to_vec(),
            format!(
                "checkpoint is truncated: {} bytes of the {} its header declares",
                whole.len() / 2,
                whole.len()
            ),
        ),
    ] {
        std::fs::write(&path, &bytes).unwrap();
        for args in [
            vec!["show", &s.url(), "etl"],
            vec!["skipped", &s.url(), "etl"],
            vec!["mark", &s.url(), "etl", "--status", "completed"],
        ] {
            let out = run(&args);
            assert_code(&out, 65);
            let err = stderr(&out);
            assert!(
                err.contains(&says)
                    && err.contains(&path.display().to_string())
                    && err.contains("keep a copy of it to investigate, then remove it by hand"),
                "{args:?}: {err}"
            );
            assert!(!err.contains("magic"), "{args:?}: {err}");
            assert_eq!(
                err.matches("remove it").count(),
                1,
                "{args:?}: the advice is given once: {err}"
            );
        }
        let out = run(&["list", &s.url()]);
        assert_code(&out, 0);
        let row = stdout(&out)
            .lines()
            .find(|l| l.contains("UNREADABLE"))
            .map(str::to_owned)
            .unwrap_or_else(|| panic!("{}", stdout(&out)));
        assert!(row.contains(&says), "{row}");
        assert_eq!(std::fs::read(&path).unwrap(), bytes, "changed");
    }
}
