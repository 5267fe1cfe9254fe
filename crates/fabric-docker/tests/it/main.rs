//! fabric-docker against the real dockerd: images built from host programs run,
//! and daemon errors come back sorted.

// A panic is how a test fails.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::time::{Duration, Instant};

use bollard::models::{ContainerCreateBody, HostConfig};
use fabric_docker::image::{self, ImageSpec, Rootfs};
use fabric_docker::labels::{self, Component};
use fabric_docker::{DockerClient, DockerError};

fn unique(prefix: &str) -> String {
    format!("{prefix}-{}-{}", std::process::id(), rand_suffix())
}

fn rand_suffix() -> u32 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos()
}

/// A `/bin/sh`-only image runs, with the owner, mode and labels the builder gave it.
#[tokio::test]
async fn a_rootfs_of_host_programs_runs_as_an_image() {
    let client = DockerClient::connect().await.unwrap();
    let mut fs = Rootfs::new();
    let sh = std::fs::canonicalize("/bin/sh").unwrap();
    fs.program(&sh, "/bin/sh").unwrap();
    fs.dir("/data", 0o700, image::IMAGE_UID).unwrap();
    fs.file("/etc/greeting", b"hello from scratch\n", 0o644, 0)
        .unwrap();
    let tag = unique("t");
    let spec = ImageSpec {
        repo: "reactor-fabric-it-sh".to_owned(),
        tag: tag.clone(),
        entrypoint: vec!["/bin/sh".to_owned(), "-c".to_owned()],
        user: Some("65534:65534".to_owned()),
        labels: vec![("io.reactor-fabric.test".to_owned(), "yes".to_owned())],
        ..Default::default()
    };
    image::build_image(&client, &spec, fs.finish().unwrap())
        .await
        .unwrap();
    let reference = spec.reference();
    let inspect = client.inspect_image(&reference).await.unwrap().unwrap();
    let config = inspect.config.unwrap();
    assert_eq!(config.labels.unwrap()["io.reactor-fabric.test"], "yes");
    assert_eq!(config.user.as_deref(), Some("65534:65534"));

    let name = unique("reactor-fabric-it-sh");
    let body = ContainerCreateBody {
        image: Some(reference.clone()),
        cmd: Some(vec![
            "read line < /etc/greeting; echo \"$line\"; [ -w /data ] && echo writable".to_owned(),
        ]),
        labels: Some(labels::labels("it-image", Component::Agent)),
        host_config: Some(HostConfig::default()),
        ..Default::default()
    };
    client.create_container(&name, body.clone()).await.unwrap();
    // Docker keeps container names unique: the second create is a conflict.
    let second = client.create_container(&name, body).await.unwrap_err();
    assert!(second.is_conflict(), "{second:?}");
    client.start_container(&name).await.unwrap();
    let mut logs = String::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        logs = client.logs_tail(&name, 10).await.unwrap();
        if logs.contains("writable") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(logs, "hello from scratch\nwritable\n");
    assert!(client.remove_container(&name).await.unwrap());
    assert!(!client.remove_container(&name).await.unwrap());
    client
        .api()
        .remove_image(
            &reference,
            None::<bollard::query_parameters::RemoveImageOptions>,
            None,
        )
        .await
        .unwrap();
}

#[tokio::test]
async fn daemon_errors_are_sorted() {
    let client = DockerClient::connect().await.unwrap();
    assert!(
        client
            .inspect_container("reactor-fabric-it-no-such")
            .await
            .unwrap()
            .is_none()
    );
    assert!(
        client
            .inspect_image("reactor-fabric-it/no-such:0")
            .await
            .unwrap()
            .is_none()
    );
    let err = image::ensure_image(&client, "reactor-fabric-it/no-such:0", "do this")
        .await
        .unwrap_err();
    assert!(
        matches!(&err, DockerError::ImageMissing { hint, .. } if hint == "do this"),
        "{err:?}"
    );
    let missing = client
        .create_container(
            &unique("reactor-fabric-it-noimg"),
            ContainerCreateBody {
                image: Some("reactor-fabric-it/no-such:0".to_owned()),
                ..Default::default()
            },
        )
        .await
        .unwrap_err();
    assert!(missing.is_not_found(), "{missing:?}");
    let filter: HashMap<String, Vec<String>> = labels::instance_filter(Some("it-no-such-instance"));
    assert!(client.list_containers(&filter).await.unwrap().is_empty());
}

#[tokio::test]
async fn a_dead_socket_is_daemon_unreachable() {
    let dir = tempfile::tempdir().unwrap();
    let dead = dir.path().join("dead.sock");
    drop(std::os::unix::net::UnixListener::bind(&dead).unwrap());
    let err = DockerClient::connect_to(Some(&format!("unix://{}", dead.display())))
        .await
        .unwrap_err();
    assert!(
        matches!(err, DockerError::DaemonUnreachable { .. }),
        "{err:?}"
    );
    assert!(
        err.to_string()
            .starts_with("Cannot connect to the Docker daemon. Is it running?"),
        "{err}"
    );
}

/// The default agent image is built once per content and runs its shell as
/// nobody; an agent container is created with its volume, and a sweep by its
/// owner label removes it and the volume, and nothing of another owner.
#[tokio::test]
async fn agent_containers_are_swept_by_owner_only() {
    use fabric_docker::agent::{self, AgentContainer, AgentContainerSpec};
    let client = DockerClient::connect().await.unwrap();
    let first = image::ensure_agent_image(&client).await.unwrap();
    let again = image::ensure_agent_image(&client).await.unwrap();
    assert_eq!(first.image, again.image);
    assert!(!again.built, "reused by its content tag");
    assert!(
        first.image.starts_with("reactor-fabric-agent:"),
        "{first:?}"
    );

    let spec = |owner: &str| AgentContainerSpec {
        name: unique("reactor-fabric-it-agent"),
        image: first.image.clone(),
        cmd: None,
        env: vec![("X".to_owned(), "1".to_owned())],
        memory_mb: 64,
        cpu_cores: 0.5,
        pids_limit: agent::DEFAULT_PIDS_LIMIT,
        tmp_mb: agent::DEFAULT_TMP_MB,
        read_only_paths: Vec::new(),
        labels: HashMap::from([(labels::LABEL_OWNER.to_owned(), owner.to_owned())]),
    };
    let (mine, theirs) = (unique("it-owner-a"), unique("it-owner-b"));
    let _guard = OwnerGuard(vec![mine.clone(), theirs.clone()]);
    let a = AgentContainer::create(&client, &spec(&mine), None, None)
        .await
        .unwrap();
    let b = AgentContainer::create(&client, &spec(&theirs), None, None)
        .await
        .unwrap();
    let out = client
        .exec(
            &a.name,
            &["sh", "-c", "id -u; echo $X; stat -c %u /workspace"],
        )
        .await
        .unwrap();
    // The user, the env, and the workspace volume owned by that user.
    assert_eq!(out.stdout, "65534\n1\n65534\n", "{out:?}");
    assert!(a.pid > 0);

    let swept = agent::sweep(&client, &mine).await.unwrap();
    assert_eq!(swept, (1, 1), "one container, one volume");
    assert!(client.inspect_container(&a.name).await.unwrap().is_none());
    assert!(client.inspect_container(&b.name).await.unwrap().is_some());
    b.remove(&client).await;
    assert_eq!(agent::sweep(&client, &theirs).await.unwrap(), (0, 0));
}

/// Removes the containers and volumes of these owners when the test ends, even on failure.
struct OwnerGuard(Vec<String>);

impl Drop for OwnerGuard {
    fn drop(&mut self) {
        for owner in &self.0 {
            let filter = format!("label={}={owner}", labels::LABEL_OWNER);
            for (list, remove) in [
                (&["ps", "-aq", "--filter"][..], &["rm", "-f", "-v"][..]),
                (
                    &["volume", "ls", "-q", "--filter"][..],
                    &["volume", "rm", "-f"][..],
                ),
            ] {
                let ids = std::process::Command::new("docker")
                    .args(list)
                    .arg(&filter)
                    .output()
                    .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                    .unwrap_or_default();
                let ids: Vec<&str> = ids.lines().collect();
                if !ids.is_empty() {
                    let _ = std::process::Command::new("docker")
                        .args(remove)
                        .args(&ids)
                        .output();
                }
            }
        }
    }
}
