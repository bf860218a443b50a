//! A 3-node cluster over TLS with mutual authentication between peers, on real processes:
//! join, replication and failover over HTTPS; clients without a certificate use `/files` but
//! not the peer routes; a node whose certificate comes from another CA is refused.
//! Certificates are made for the test with rcgen; requests go through curl.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::*;
use rcgen::{BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair};

/// A CA's certificate (PEM path) and one leaf certificate and key it signed, for 127.0.0.1.
struct Pki {
    ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
}

fn make_pki(dir: &Path, name: &str) -> Pki {
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, format!("{name} CA"));
    let ca_key = KeyPair::generate().unwrap();
    let ca = ca_params.self_signed(&ca_key).unwrap();

    let mut params = CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()]).unwrap();
    params
        .distinguished_name
        .push(DnType::CommonName, format!("{name} node"));
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let key = KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, &ca, &ca_key).unwrap();

    let pki = Pki {
        ca: dir.join(format!("{name}-ca.pem")),
        cert: dir.join(format!("{name}-node.pem")),
        key: dir.join(format!("{name}-node.key")),
    };
    std::fs::write(&pki.ca, ca.pem()).unwrap();
    std::fs::write(&pki.cert, cert.pem()).unwrap();
    std::fs::write(&pki.key, key.serialize_pem()).unwrap();
    pki
}

fn node_args(pki: &Pki) -> Vec<String> {
    let p = |p: &PathBuf| p.display().to_string();
    vec![
        "--tls-cert".into(),
        p(&pki.cert),
        "--tls-key".into(),
        p(&pki.key),
        "--tls-ca".into(),
        p(&pki.ca),
    ]
}

fn curl_args(pki: &Pki, client_cert: bool) -> Vec<String> {
    let p = |p: &PathBuf| p.display().to_string();
    let mut args = vec!["--cacert".into(), p(&pki.ca)];
    if client_cert {
        args.extend(["--cert".into(), p(&pki.cert), "--key".into(), p(&pki.key)]);
    }
    args
}

#[test]
fn mutual_tls_cluster_joins_replicates_fails_over_and_refuses_strangers() {
    let certs = tempfile::tempdir().unwrap();
    let ours = make_pki(certs.path(), "cluster");
    let foreign = make_pki(certs.path(), "foreign");
    let mut c = Cluster::start_full(3, Some(curl_args(&ours, true)), |_, _| node_args(&ours));

    // Joined over TLS; replication and forwarding work.
    let leader = c.wait_leader();
    let follower = c.followers(leader)[0];
    assert_eq!(c.nodes[follower].post("/files/secure", b"over tls").0, 200);
    for i in 0..3 {
        assert_eq!(
            c.nodes[i].get("/files/secure"),
            (200, b"over tls".to_vec()),
            "node {i}"
        );
    }

    // A client with no certificate may use the client API but not the peer or membership routes.
    let anonymous = curl_args(&ours, false);
    let name = c.nodes[follower].name.clone();
    assert_eq!(
        https(&name, &anonymous, "GET", "/files/secure", b""),
        (200, b"over tls".to_vec())
    );
    for route in ["/cluster/remove", "/raft/propose", "/cluster/join"] {
        let (code, body) = https(&name, &anonymous, "POST", route, b"{}");
        assert_eq!(code, 401, "{route}: {}", String::from_utf8_lossy(&body));
    }
    // A client certificate from another CA does not even complete the handshake.
    let mut stranger = curl_args(&ours, false);
    stranger.extend(["--cert".into(), foreign.cert.display().to_string()]);
    stranger.extend(["--key".into(), foreign.key.display().to_string()]);
    assert_eq!(https(&name, &stranger, "POST", "/cluster/remove", b"{}").0, 0);
    // Plain HTTP gets no answer from a TLS port.
    assert!(c.nodes[follower].status().is_some());
    assert_eq!(http(&name, "GET", "/status", b"").map(|r| r.0).unwrap_or(0), 0);

    // Failover over TLS.
    c.nodes[leader].kill();
    let new = c.wait_leader();
    assert_ne!(new, leader);
    let survivor = c.followers(new)[0];
    assert_eq!(c.nodes[survivor].post("/files/after-failover", b"yes").0, 200);
    c.nodes[leader].spawn();
    c.wait_replicated(leader, "after-failover", b"yes");

    // A node whose certificate another CA signed cannot join.
    let seed = c.nodes[new].name.clone();
    let intruder_args = node_args(&foreign);
    let intruder_args: Vec<&str> = intruder_args.iter().map(String::as_str).collect();
    let intruder = c.add_node(Some(&seed), &intruder_args);
    let logs = wait_for(Duration::from_secs(20), "the intruder's join to fail", || {
        let logs = c.nodes[intruder].logs();
        logs.contains("join failed").then_some(logs)
    });
    assert!(
        logs.to_lowercase().contains("certificate") || logs.contains("tls"),
        "{logs}"
    );
    let members = c.nodes[new].status().unwrap();
    assert_eq!(members["members"].as_array().unwrap().len(), 3, "{members}");
    assert!(members["learners"].as_array().unwrap().is_empty());
    c.nodes[intruder].kill();
}
