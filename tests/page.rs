//! The cluster page in a real browser: headless Chromium driven over WebDriver (Debian's
//! `chromium` and `chromium-driver`), against a 3-node cluster. Without them the test prints
//! `SKIPPED: no chromium` (`.ci/run` installs them).
//!
//! The page must list the members and the leader, upload a file through its form (seen on
//! another node over HTTP), show a file written over HTTP in its tree and in its log (from
//! the watch stream), and show the new leader after the leader is killed. A screenshot is
//! saved and its path printed; with `RAFTD_UPDATE_SCREENSHOT=1` it also replaces the
//! README's `docs/cluster-page.png`.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use base64::Engine as _;
use common::{http, wait_for, Cluster};
use serde_json::{json, Value};

const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// A chromedriver process and one browser session in it.
struct Browser {
    driver: Child,
    addr: String,
    session: String,
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.call("DELETE", &format!("/session/{}", self.session), None);
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

/// One WebDriver request: (status, JSON answer).
fn webdriver(addr: &str, method: &str, path: &str, body: Option<&Value>) -> std::io::Result<(u16, Value)> {
    let body = body.map(Value::to_string).unwrap_or_default();
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(60)))?;
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    let mut raw = Vec::new();
    let mut buf = [0u8; 65536];
    // Read the head, then exactly Content-Length bytes (the driver may keep the socket open).
    let (head_end, length) = loop {
        let n = s.read(&mut buf)?;
        if n == 0 {
            return Err(std::io::Error::other("webdriver closed the connection"));
        }
        raw.extend_from_slice(&buf[..n]);
        if let Some(end) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&raw[..end]).to_lowercase();
            let length = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse::<usize>().ok())
                .unwrap_or(0);
            break (end + 4, length);
        }
    };
    while raw.len() < head_end + length {
        let n = s.read(&mut buf)?;
        if n == 0 {
            break;
        }
        raw.extend_from_slice(&buf[..n]);
    }
    let status = String::from_utf8_lossy(&raw[..head_end])
        .split(' ')
        .nth(1)
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let value = serde_json::from_slice(&raw[head_end..]).unwrap_or(Value::Null);
    Ok((status, value))
}

impl Browser {
    /// Starts chromedriver and a headless Chromium session, or `None` if they are missing.
    fn start() -> Option<Browser> {
        let (chromium, driver) = (Path::new("/usr/bin/chromium"), Path::new("/usr/bin/chromedriver"));
        if !chromium.exists() || !driver.exists() {
            println!("SKIPPED: no chromium (install Debian's chromium and chromium-driver)");
            return None;
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let driver = Command::new(driver)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromedriver");
        let addr = format!("127.0.0.1:{port}");
        wait_for(Duration::from_secs(30), "chromedriver", || {
            let (code, v) = webdriver(&addr, "GET", "/status", None).ok()?;
            (code == 200 && v["value"]["ready"] == true).then_some(())
        });
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": chromium,
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1280,1000"]
            }
        }}});
        let (code, v) = webdriver(&addr, "POST", "/session", Some(&caps)).unwrap();
        assert_eq!(code, 200, "new session: {v}");
        let session = v["value"]["sessionId"].as_str().unwrap().to_string();
        Some(Browser {
            driver,
            addr,
            session,
        })
    }

    fn call(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let (code, v) = webdriver(&self.addr, method, path, body.as_ref()).expect("webdriver request");
        assert_eq!(code, 200, "{method} {path}: {v}");
        v["value"].clone()
    }

    fn session(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        self.call(method, &format!("/session/{}{path}", self.session), body)
    }

    fn open(&self, url: &str) {
        self.session("POST", "/url", Some(json!({ "url": url })));
    }

    /// Runs `script` (a function body; `return` gives the result) in the page.
    fn eval(&self, script: &str) -> Value {
        self.session(
            "POST",
            "/execute/sync",
            Some(json!({"script": script, "args": []})),
        )
    }

    fn element(&self, css: &str) -> String {
        let v = self.session(
            "POST",
            "/element",
            Some(json!({"using": "css selector", "value": css})),
        );
        v[ELEMENT].as_str().unwrap().to_string()
    }

    fn type_into(&self, css: &str, text: &str) {
        let id = self.element(css);
        self.session(
            "POST",
            &format!("/element/{id}/value"),
            Some(json!({ "text": text })),
        );
    }

    fn click(&self, css: &str) {
        let id = self.element(css);
        self.session("POST", &format!("/element/{id}/click"), Some(json!({})));
    }

    /// Waits until `script` returns `true` in the page.
    fn wait_until(&self, what: &str, script: &str) {
        wait_for(Duration::from_secs(30), what, || {
            (self.eval(script) == true).then_some(())
        });
    }

    fn screenshot(&self) -> Vec<u8> {
        let b64 = self.session("GET", "/screenshot", None);
        base64::engine::general_purpose::STANDARD
            .decode(b64.as_str().unwrap())
            .unwrap()
    }
}

#[test]
fn the_cluster_page_works_in_a_real_browser() {
    let Some(browser) = Browser::start() else {
        return;
    };
    let mut c = Cluster::start(3, &[]);
    let leader = c.wait_leader();
    let follower = c.followers(leader)[0];
    let other = c.followers(leader)[1];
    let names: Vec<String> = c.nodes.iter().map(|n| n.name.clone()).collect();

    // Served by a follower: it lists every member, marks the leader, and has a title.
    browser.open(&format!("http://{}/", names[follower]));
    assert_eq!(browser.session("GET", "/title", None), "raftd cluster");
    browser.wait_until(
        "three members on the page",
        "return document.querySelectorAll('#members tbody tr').length === 3",
    );
    let leader_name = &names[leader];
    browser.wait_until(
        "the leader on the page",
        &format!("return document.querySelector('#leader').textContent === '{leader_name}' && document.querySelector('#members tr[data-name=\"{leader_name}\"]').dataset.role === 'leader'"),
    );
    browser.wait_until(
        "no banner once the node is ready",
        "return !document.querySelector('#banner').classList.contains('shown')",
    );

    // Upload through the form; another node serves it over HTTP.
    let local = c.tmp.path().join("upload.txt");
    std::fs::write(&local, b"uploaded through the page\n").unwrap();
    browser.type_into("#upload-path", "up/loaded.txt");
    browser.type_into("#upload-file", local.to_str().unwrap());
    browser.click("#upload-button");
    wait_for(Duration::from_secs(20), "the upload on another node", || {
        let (code, body) = http(&names[other], "GET", "/files/up/loaded.txt", b"").ok()?;
        (code == 200 && body == b"uploaded through the page\n").then_some(())
    });
    browser.wait_until(
        "the form's confirmation",
        "return document.querySelector('#message').textContent === 'saved up/loaded.txt'",
    );

    // A write over HTTP elsewhere appears in the tree and in the log stream.
    let (code, _) = http(&names[leader], "PUT", "/files/seen-by-page", b"hello page").unwrap();
    assert_eq!(code, 200);
    browser.wait_until(
        "the new file in the tree",
        "return !!document.querySelector('#files tr[data-name=\"seen-by-page\"]')",
    );
    browser.wait_until(
        "the write in the log stream",
        "return [...document.querySelectorAll('#log li')].some(li => li.textContent.includes('file:write') && li.textContent.includes('seen-by-page'))",
    );
    // Clicking it previews its content.
    browser.click("#files tr[data-name=\"seen-by-page\"] a");
    browser.wait_until(
        "the preview",
        "return document.querySelector('#preview').textContent.includes('hello page')",
    );

    // Deleting through the page (after its confirmation dialog) removes it everywhere.
    browser.click("#files tr[data-name=\"seen-by-page\"] button.del");
    browser.session("POST", "/alert/accept", Some(json!({})));
    browser.wait_until(
        "the deleted file gone from the tree",
        "return !document.querySelector('#files tr[data-name=\"seen-by-page\"]')",
    );
    wait_for(Duration::from_secs(20), "the delete on another node", || {
        (http(&names[other], "GET", "/files/seen-by-page", b"").ok()?.0 == 404).then_some(())
    });

    // The leader dies: the page shows the new one, and the old one not answering.
    c.nodes[leader].kill();
    browser.wait_until(
        "a new leader on the page",
        &format!("const l = document.querySelector('#leader').textContent; return l !== '{leader_name}' && l !== 'none' && l !== '…'"),
    );
    let shown = browser.eval("return document.querySelector('#leader').textContent");
    let new_leader = c.wait_leader();
    browser.wait_until(
        "the page to agree with the cluster",
        &format!(
            "return document.querySelector('#leader').textContent === '{}'",
            names[new_leader]
        ),
    );
    browser.wait_until(
        "the dead leader marked as not answering",
        &format!("const r = document.querySelector('#members tr[data-name=\"{leader_name}\"]'); return !!r && r.lastChild.textContent === 'no'"),
    );
    println!("the page showed {shown} as leader after {leader_name} was killed");

    // A phone-sized window still shows everything (one column, no page-wide scrolling).
    browser.session("POST", "/window/rect", Some(json!({"width": 400, "height": 900})));
    let overflow = browser.eval("return document.documentElement.scrollWidth <= window.innerWidth + 1");
    browser.session(
        "POST",
        "/window/rect",
        Some(json!({"width": 1280, "height": 1000})),
    );
    assert_eq!(overflow, true, "the page is wider than a phone screen");

    let png = browser.screenshot();
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"));
    let shot = dir.join("cluster-page.png");
    std::fs::write(&shot, &png).unwrap();
    println!("screenshot: {}", shot.display());
    if std::env::var_os("RAFTD_UPDATE_SCREENSHOT").is_some() {
        let readme = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/cluster-page.png");
        std::fs::write(&readme, &png).unwrap();
        println!("updated {}", readme.display());
    }

    // One more node gone: the page's node has no quorum, and the page says so.
    let second = if new_leader == follower { other } else { new_leader };
    c.nodes[second].kill();
    browser.wait_until(
        "the no-quorum banner",
        "const b = document.querySelector('#banner'); return b.classList.contains('shown') && b.textContent.startsWith('No quorum')",
    );
    println!(
        "banner: {}",
        browser.eval("return document.querySelector('#banner').textContent")
    );
}
