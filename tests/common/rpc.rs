//! Async helpers shared by the tests that talk to syncd from inside a tokio
//! runtime: raw gRPC streams, a client of the library, polling, and a
//! kill -9 + restart that does not block the runtime.

use std::time::Duration;

use syncd::client::{Client, ClientOptions};
use syncd::proto::v1::{sessions_client::SessionsClient, CreateSessionRequest};
use tokio::task::JoinHandle;
use tonic::transport::Channel;
use tonic::{Status, Streaming};

use super::{Syncd, HANG_GUARD};

/// A new gRPC connection to syncd.
pub async fn open_channel(syncd: &Syncd) -> Channel {
    Channel::from_shared(syncd.addr.clone())
        .expect("valid address")
        .connect()
        .await
        .expect("connect to syncd")
}

/// A new session with a TTL of a minute.
pub async fn session(channel: &Channel) -> u64 {
    SessionsClient::new(channel.clone())
        .create(CreateSessionRequest {
            ttl_ms: 60_000,
            client_name: "test".into(),
        })
        .await
        .expect("create session")
        .into_inner()
        .session_id
}

/// A client of the library with a 10 s session, named for the test.
pub async fn client(syncd: &Syncd, client_name: &str) -> Client {
    let options = ClientOptions {
        session_ttl: Duration::from_secs(10),
        client_name: client_name.into(),
        ..ClientOptions::default()
    };
    Client::connect_with(syncd.addr.clone(), options)
        .await
        .expect("connect")
}

/// The stream's next message; panics on an error status or its end.
pub async fn next<T: std::fmt::Debug>(stream: &mut Streaming<T>) -> T {
    match tokio::time::timeout(HANG_GUARD, stream.message()).await {
        Ok(Ok(Some(message))) => message,
        Ok(other) => panic!("expected a message, got {other:?}"),
        Err(_) => panic!("no message within {HANG_GUARD:?}"),
    }
}

/// The status that ends the stream.
pub async fn end<T: std::fmt::Debug>(stream: &mut Streaming<T>) -> Status {
    match tokio::time::timeout(HANG_GUARD, stream.message()).await {
        Ok(Err(status)) => status,
        Ok(other) => panic!("expected an error status, got {other:?}"),
        Err(_) => panic!("the stream did not end within {HANG_GUARD:?}"),
    }
}

/// Asserts that the stream ends cleanly after its last message.
pub async fn ends_cleanly<T: std::fmt::Debug>(stream: &mut Streaming<T>) {
    match tokio::time::timeout(HANG_GUARD, stream.message()).await {
        Ok(Ok(None)) => {}
        Ok(other) => panic!("expected the stream's end, got {other:?}"),
        Err(_) => panic!("the stream did not end within {HANG_GUARD:?}"),
    }
}

/// Polls `check` every 10 ms until it holds; fails the test after
/// [`HANG_GUARD`]. (The async twin of `common::eventually`.)
pub async fn until(what: &str, mut check: impl AsyncFnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + HANG_GUARD;
    while !check().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The answer of a spawned wait, bounded by [`HANG_GUARD`].
pub async fn answer<T>(task: JoinHandle<T>) -> T {
    tokio::time::timeout(HANG_GUARD, task)
        .await
        .expect("the wait hung")
        .expect("the wait panicked")
}

/// kill -9 and restart on the same data and port, without blocking the
/// runtime.
pub async fn kill9_and_restart(mut syncd: Syncd) -> Syncd {
    tokio::task::spawn_blocking(move || {
        syncd.kill9();
        syncd.restart();
        syncd
    })
    .await
    .expect("restart")
}

/// Asserts that standard health checking reports each service SERVING.
pub async fn assert_serving(channel: &Channel, services: &[&str]) {
    use tonic_health::pb::{health_client::HealthClient, HealthCheckRequest};
    for service in services {
        let reply = HealthClient::new(channel.clone())
            .check(HealthCheckRequest {
                service: (*service).into(),
            })
            .await
            .expect("health check")
            .into_inner();
        assert_eq!(reply.status, 1, "{service} should be SERVING");
    }
}

/// The services a reflection endpoint lists; `$v` is the reflection
/// version's generated module (the two versions have identical shapes).
macro_rules! list_services {
    ($name:ident, $v:ident) => {
        pub async fn $name(channel: Channel) -> Vec<String> {
            use tonic_reflection::pb::$v::{
                server_reflection_client::ServerReflectionClient,
                server_reflection_request::MessageRequest,
                server_reflection_response::MessageResponse, ServerReflectionRequest,
            };
            let request = ServerReflectionRequest {
                host: String::new(),
                message_request: Some(MessageRequest::ListServices(String::new())),
            };
            let mut replies = ServerReflectionClient::new(channel)
                .server_reflection_info(tokio_stream::once(request))
                .await
                .expect(concat!("reflection ", stringify!($v)))
                .into_inner();
            match next(&mut replies).await.message_response {
                Some(MessageResponse::ListServicesResponse(list)) => {
                    list.service.into_iter().map(|s| s.name).collect()
                }
                other => panic!("unexpected reflection reply {other:?}"),
            }
        }
    };
}

list_services!(list_services_v1, v1);
list_services!(list_services_v1alpha, v1alpha);
