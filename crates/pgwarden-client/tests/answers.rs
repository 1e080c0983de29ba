//! Answers that are not pgwarden's: an error page from a proxy in front of it is cut to one
//! short line, and an endless answer is refused instead of read into memory.

use pgwarden_client::{Auth, Client, ClientError};
use secrecy::SecretString;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A server answering every connection with `head` then `body_len` bytes of `fill`.
async fn serving(head: String, fill: u8, body_len: usize) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let (head, body) = (head.clone(), vec![fill; body_len]);
            tokio::spawn(async move {
                let _ = stream.read(&mut [0u8; 4096]).await;
                let _ = stream.write_all(head.as_bytes()).await;
                let _ = stream.write_all(&body).await;
            });
        }
    });
    address
}

fn client(address: &str) -> Client {
    Client::new(address, Auth::Token(SecretString::from("t")))
}

#[tokio::test]
async fn a_foreign_error_page_is_cut_to_one_short_line() {
    let page = format!(
        "<html>\n<body>\n{}\n</body></html>",
        "bad gateway ".repeat(200)
    );
    let head = format!(
        "HTTP/1.1 502 Bad Gateway\r\ncontent-type: text/html\r\ncontent-length: {}\r\n\r\n{page}",
        page.len()
    );
    let address = serving(head, b' ', 0).await;
    let error = client(&address)
        .credential("database/creds/app")
        .await
        .unwrap_err();
    let ClientError::Api {
        status, message, ..
    } = &error
    else {
        panic!("{error:?}");
    };
    assert_eq!(*status, 502);
    assert!(!message.contains('\n'), "{message}");
    assert_eq!(message.chars().count(), 513, "{message}");
    assert!(
        message.starts_with("<html> <body> bad gateway bad gateway"),
        "{message}"
    );
    assert!(message.ends_with('…'));
}

#[tokio::test]
async fn an_answer_beyond_16_mib_is_refused() {
    let len = 17 << 20;
    let head = format!(
        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {len}\r\n\r\n"
    );
    let address = serving(head, b' ', len).await;
    let error = client(&address)
        .credential("database/creds/app")
        .await
        .unwrap_err();
    assert_eq!(
        error.to_string(),
        "unexpected answer to GET database/creds/app: the answer is larger than 16 MiB"
    );
}

#[tokio::test]
async fn an_answer_cut_off_midway_is_transient() {
    // Promises 1000 bytes, sends 10, and closes: retried later, as if unreachable.
    let head = "HTTP/1.1 502 Bad Gateway\r\ncontent-length: 1000\r\n\r\n".to_string();
    let address = serving(head, b'x', 10).await;
    let error = client(&address)
        .credential("database/creds/app")
        .await
        .unwrap_err();
    assert!(
        matches!(error, ClientError::Unreachable { .. }) && error.is_transient(),
        "{error:?}"
    );
}
