//! fabric-docker against the real dockerd: images built from host programs run,
//! and daemon errors come back sorted.

// A panic is how a test fails.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;

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
    for _ in 0..100 {
        logs = client.logs_tail(&name, 10).await.unwrap();
        if logs.contains("writable") {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
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
