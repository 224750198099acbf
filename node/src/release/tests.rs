use super::*;

/// A minimal package named `apiary` (dpkg-deb, as the publisher's machine has it).
fn package(dir: &Path, version: &str) -> std::path::PathBuf {
    package_for(dir, version, "arm64")
}

fn package_for(dir: &Path, version: &str, arch: &str) -> std::path::PathBuf {
    let root = dir.join(format!("pkg-{version}"));
    std::fs::create_dir_all(root.join("DEBIAN")).unwrap();
    std::fs::write(
        root.join("DEBIAN/control"),
        format!(
            "Package: apiary\nVersion: {version}\nArchitecture: {arch}\nMaintainer: t <t@t>\n\
             Description: test\n"
        ),
    )
    .unwrap();
    let deb = dir.join(format!("apiary_{version}_{arch}.deb"));
    let out = std::process::Command::new("dpkg-deb")
        .args(["--root-owner-group", "--build"])
        .arg(&root)
        .arg(&deb)
        .output()
        .expect("dpkg-deb (the dpkg package) is needed by this test");
    assert!(out.status.success(), "{out:?}");
    deb
}

async fn signed(meadow: &Meadow) -> bytes::Bytes {
    let at = Key::Release {
        channel: "stable".into(),
        arch: "arm64".into(),
    };
    meadow.get(&at.to_string()).await.unwrap().unwrap().value
}

#[tokio::test]
async fn a_published_release_verifies_with_its_key_only_and_untampered() {
    let dir = tempfile::tempdir().unwrap();
    let meadow = Meadow::open("memory://", &Default::default())
        .await
        .unwrap();
    let key = dir.path().join("release.key");
    let public = keygen(&key).unwrap();
    let other = keygen(&dir.path().join("other.key")).unwrap();
    assert_eq!(
        keygen(&key).unwrap_err().kind,
        crate::error::ErrorKind::AlreadyExists,
        "a key is never overwritten"
    );
    let deb = package(dir.path(), "1.2.3+4.gabc");
    let release = publish(&meadow, &deb, &key, "stable").await.unwrap();
    assert_eq!(
        (release.version.as_str(), release.architecture.as_str()),
        ("1.2.3+4.gabc", "arm64")
    );
    let bytes = signed(&meadow).await;
    assert_eq!(
        verify(&bytes, &[other.clone(), public.clone()]).unwrap(),
        release
    );
    let e = verify(&bytes, std::slice::from_ref(&other)).unwrap_err();
    assert!(
        e.message
            .contains("not signed by a key in update.trusted_keys"),
        "{e}"
    );
    // The package is in the meadow under its hash, as signed.
    let stored = meadow
        .get(
            &Key::ReleasePackage {
                channel: "stable".into(),
                sha256: release.sha256.clone(),
            }
            .to_string(),
        )
        .await
        .unwrap()
        .unwrap()
        .value;
    assert_eq!(stored.as_ref(), std::fs::read(&deb).unwrap());

    // A changed version under the old signature is refused.
    let tampered = String::from_utf8(bytes.to_vec())
        .unwrap()
        .replace("1.2.3+4.gabc", "9.9.9");
    let e = verify(tampered.as_bytes(), std::slice::from_ref(&public)).unwrap_err();
    assert!(e.message.contains("not signed"), "{e}");

    // A new release replaces the old one's package.
    let next = publish(&meadow, &package(dir.path(), "1.2.4"), &key, "stable")
        .await
        .unwrap();
    assert_eq!(verify(&signed(&meadow).await, &[public]).unwrap(), next);
    let old = Key::ReleasePackage {
        channel: "stable".into(),
        sha256: release.sha256,
    };
    assert!(meadow.get(&old.to_string()).await.unwrap().is_none());
}

#[tokio::test]
async fn publishing_refuses_what_is_not_the_apiary_package_or_key() {
    let dir = tempfile::tempdir().unwrap();
    let meadow = Meadow::open("memory://", &Default::default())
        .await
        .unwrap();
    let key = dir.path().join("release.key");
    keygen(&key).unwrap();
    let not_deb = dir.path().join("x.deb");
    std::fs::write(&not_deb, b"not a package").unwrap();
    let e = publish(&meadow, &not_deb, &key, "stable")
        .await
        .unwrap_err();
    assert!(e.message.contains("is not a Debian package"), "{e}");
    let deb = package(dir.path(), "1.0");
    let e = publish(&meadow, &deb, &not_deb, "stable")
        .await
        .unwrap_err();
    assert!(e.message.contains("is not a signing key"), "{e}");
    let e = publish(&meadow, &deb, &key, "no/such").await.unwrap_err();
    assert!(e.message.contains("channel"), "{e}");
    assert!(
        meadow.list_all("_apiary").await.unwrap().is_empty(),
        "nothing written"
    );
}

#[test]
fn versions_are_safe_file_name_parts() {
    for ok in ["0.1.0", "0.1.0+98.gbaf6d4b", "1:2.0~rc1-3"] {
        assert!(is_version(ok), "{ok}");
    }
    for bad in ["", "../x", "1.0/2", "a1.0", "1.0 2", "1\n"] {
        assert!(!is_version(bad), "{bad:?}");
    }
}

#[tokio::test]
async fn one_node_at_a_time_takes_a_release_and_none_retakes_one_rolled_back_on_it() {
    use super::follow::{Follower, Request};
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let meadow = Meadow::open("memory://", &Default::default())
        .await
        .unwrap();
    let key = d.join("release.key");
    let public = keygen(&key).unwrap();
    let release = publish(&meadow, &package_for(d, "99.0.0", arch()), &key, "stable")
        .await
        .unwrap();
    let config = crate::config::UpdateConfig {
        channel: Some("stable".into()),
        trusted_keys: vec![public],
        ..Default::default()
    };
    let follower = |name: &str, packaged: bool| {
        let helper_dir = d.join(format!("{name}-helper"));
        std::fs::create_dir_all(&helper_dir).unwrap();
        Follower {
            meadow: meadow.clone(),
            config: config.clone(),
            node_id: name.into(),
            state_dir: d.join(name),
            helper_dir: packaged.then_some(helper_dir),
            status: Default::default(),
        }
    };
    let (a, b) = (follower("a", true), follower("b", true));
    let look = async |f: &Follower| f.check("stable").await.unwrap();

    let (state, busy) = look(&a).await;
    assert!(state.starts_with("installing 99.0.0") && busy, "{state}");
    // What the helper gets: the signed release as read, and the checked package beside it.
    let asked = d.join("a/update");
    let request: Request =
        serde_json::from_slice(&std::fs::read(asked.join("request.json")).unwrap()).unwrap();
    assert_eq!(
        verify(request.signed.as_bytes(), &config.trusted_keys).unwrap(),
        release
    );
    assert_eq!(
        super::install::sha256_file(&asked.join(&request.package)).unwrap(),
        release.sha256
    );
    let (state, busy) = look(&b).await;
    assert!(
        state.contains("another node is upgrading first") && !busy,
        "{state}"
    );
    assert_eq!(look(&a).await, ("an install is under way".into(), true));

    // The helper rolled it back on node a: a gives the lease up and leaves the release alone;
    // b takes its turn.
    std::fs::remove_file(asked.join("request.json")).unwrap();
    std::fs::write(
        d.join("a-helper/state.json"),
        r#"{"rolled_back": {"99.0.0": "it was not ready within 300 s"}}"#,
    )
    .unwrap();
    let (state, _) = look(&a).await;
    assert_eq!(
        state,
        "99.0.0 was rolled back here: it was not ready within 300 s"
    );
    let (state, _) = look(&b).await;
    assert!(state.starts_with("installing 99.0.0"), "{state}");

    // A node not installed from the package only says what it would do.
    let (state, busy) = look(&follower("c", false)).await;
    assert!(
        state.contains("not installed from the apiary package") && !busy,
        "{state}"
    );
    // A release signed by a key the node does not trust is refused.
    let untrusting = Follower {
        config: crate::config::UpdateConfig {
            trusted_keys: vec![keygen(&d.join("other.key")).unwrap()],
            ..config.clone()
        },
        ..follower("e", true)
    };
    let e = untrusting.check("stable").await.unwrap_err();
    assert!(
        e.message
            .contains("not signed by a key in update.trusted_keys"),
        "{e}"
    );
}
