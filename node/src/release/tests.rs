use super::*;

/// A minimal package named `apiary` (dpkg-deb, as the publisher's machine has it).
fn package(dir: &Path, version: &str) -> std::path::PathBuf {
    let root = dir.join(format!("pkg-{version}"));
    std::fs::create_dir_all(root.join("DEBIAN")).unwrap();
    std::fs::write(
        root.join("DEBIAN/control"),
        format!(
            "Package: apiary\nVersion: {version}\nArchitecture: arm64\nMaintainer: t <t@t>\n\
             Description: test\n"
        ),
    )
    .unwrap();
    let deb = dir.join(format!("apiary_{version}_arm64.deb"));
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
