//! Regressions from the outside tests of issue 11: a tenant must not be able
//! to stall the controller, run a job twice, or pose as a node.

use std::time::Duration;

use allot_sdk::{JobSpec, proto};
use tonic::metadata::MetadataValue;

use crate::harness::*;

/// A raw UsageService client with a bearer token and a deadline per call.
async fn usage_client(
    server: &DevServer,
    token: &str,
) -> proto::usage_service_client::UsageServiceClient<
    tonic::service::interceptor::InterceptedService<
        tonic::transport::Channel,
        impl tonic::service::Interceptor,
    >,
> {
    let channel = tonic::transport::Endpoint::from_shared(server.addr.clone())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let bearer: MetadataValue<_> = format!("Bearer {token}").parse().unwrap();
    proto::usage_service_client::UsageServiceClient::with_interceptor(
        channel,
        move |mut r: tonic::Request<()>| {
            r.metadata_mut().insert("authorization", bearer.clone());
            Ok(r)
        },
    )
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

async fn health_serving(server: &DevServer) -> bool {
    let channel = tonic::transport::Endpoint::from_shared(server.addr.clone())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
    let mut req = tonic::Request::new(tonic_health::pb::HealthCheckRequest {
        service: String::new(),
    });
    req.set_timeout(Duration::from_secs(5));
    matches!(health.check(req).await, Ok(r) if r.get_ref().status == 1)
}

/// Defect 1: `GetUsage` to `i64::MAX` grouped by hour looped once per hour
/// of the window on the async runtime and froze every RPC. Windows are
/// bounded now, and a report over the longest window allowed answers at
/// once, whatever it is grouped by, while the server stays responsive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_cannot_stall_the_controller_with_a_huge_report_window() {
    let dir = tempdir();
    let server = DevServer::start(dir.path()).await;
    let client = server.client().await;
    let job = client.submit(JobSpec::new("true").gpus(1)).await.unwrap();
    wait_final(&client, &job.id).await;
    let mut usage = usage_client(&server, &server.token).await;
    let hour = 3_600_000;
    let now = now_ms();
    let this_hour = now - now % hour;
    let ask = |from: i64, to: i64, group_by: &[&str]| {
        let mut r = tonic::Request::new(proto::GetUsageRequest {
            from_unix_ms: from,
            to_unix_ms: to,
            group_by: group_by.iter().map(|s| s.to_string()).collect(),
            tenant: String::new(),
        });
        r.set_timeout(Duration::from_secs(10));
        r
    };
    for group_by in [&["hour"][..], &["day"], &[]] {
        let err = usage
            .get_usage(ask(this_hour, i64::MAX, group_by))
            .await
            .expect_err("an unbounded window is refused");
        assert_eq!(err.code(), tonic::Code::InvalidArgument, "{}", err.message());
        assert!(err.message().contains("to_unix_ms"), "{}", err.message());
        assert!(health_serving(&server).await, "the server still answers");
    }
    // A window of exactly the longest span is answered, grouped by hour too.
    let year = 366 * 24 * hour;
    for group_by in [&["hour", "tag:team"][..], &["day", "project"], &["job"], &[]] {
        let started = std::time::Instant::now();
        let rows = usage
            .get_usage(ask(this_hour - year / 2, this_hour + year / 2, group_by))
            .await
            .unwrap_or_else(|e| panic!("{group_by:?}: {e}"))
            .into_inner();
        assert_eq!(rows.totals.len(), 1, "{group_by:?}: {rows:?}");
        assert!(started.elapsed() < Duration::from_secs(10), "{group_by:?}");
    }
    let err = usage
        .get_usage(ask(this_hour - year, this_hour + hour, &[]))
        .await
        .expect_err("one millisecond over the longest span");
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    // The same bounds for exports and lease listings.
    let mut req = tonic::Request::new(proto::ExportUsageRequest {
        from_unix_ms: this_hour,
        to_unix_ms: this_hour + 400 * 24 * hour,
        tenant: String::new(),
        format: proto::ExportFormat::Csv as i32,
    });
    req.set_timeout(Duration::from_secs(10));
    let err = usage
        .export_usage(req)
        .await
        .expect_err("an export over a year is refused");
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{}", err.message());
    let err = usage
        .list_leases(proto::ListLeasesRequest {
            from_unix_ms: now,
            to_unix_ms: now - 1000,
            ..Default::default()
        })
        .await
        .expect_err("from after to");
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert_eq!(
        tonic_types::StatusExt::get_details_bad_request(&err).map(|b| b.field_violations[0].field.clone()),
        Some("to_unix_ms".to_string())
    );
}

/// Defect 7 (and the messages of 11): every string and list of a spec is
/// bounded, a refusal names the field, quotes at most a short prefix of
/// what was sent, and stores nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_specs_are_refused_naming_the_field_with_a_short_message() {
    let dir = tempdir();
    let server = DevServer::start(dir.path()).await;
    let client = server.client().await;
    let big = "x".repeat(3 << 20);
    let refuse = |spec: JobSpec, field: &'static str| {
        let client = &client;
        async move {
            let err = client
                .submit(spec)
                .await
                .expect_err(&format!("{field} must be refused"));
            assert_eq!(
                err.code(),
                allot_sdk::Code::InvalidArgument,
                "{field}: {}",
                err.message()
            );
            assert_eq!(err.field(), Some(field), "{}", err.message());
            assert!(
                err.message().len() < 512,
                "{field}: a {} byte message",
                err.message().len()
            );
        }
    };
    refuse(JobSpec::new("true").env("BIG", big.as_str()), "spec.env").await;
    refuse(JobSpec::new(big.as_str()), "spec.command").await;
    refuse(JobSpec::new("true").name("n".repeat(300)), "spec.name").await;
    refuse(
        JobSpec::new("true").args((0..200_000).map(|i| i.to_string())),
        "spec.args",
    )
    .await;
    let mut tagged = JobSpec::new("true");
    for i in 0..10_000 {
        tagged = tagged.tag(format!("t{i}"), "v");
    }
    refuse(tagged, "spec.tags").await;
    refuse(JobSpec::new("true").tag("k".repeat(1 << 20), "v"), "spec.tags").await;
    let mut envs = JobSpec::new("true");
    for i in 0..40 {
        envs = envs.env(format!("V{i}"), "v".repeat(30_000));
    }
    refuse(envs, "spec").await;
    // Defect 6: a grace period past the server's maximum (10 min by default).
    refuse(
        JobSpec::new("true").grace_period_ms(10 * 86_400_000),
        "spec.grace_period_ms",
    )
    .await;
    // A long command's own name is cut to a name's length, not refused.
    let long = format!("/{}", "c".repeat(1000));
    let job = client
        .submit(JobSpec::new(long.as_str()))
        .await
        .expect("a long command is fine");
    assert_eq!(job.spec.unwrap().name.len(), 256);
    // Nothing else was stored.
    let all = client.list_all(Default::default()).await.unwrap();
    assert_eq!(all.len(), 1, "{all:?}");
}

/// An agent session opened by hand: the registration of a node with one
/// fake GPU of model `FAKE`, and the controller's messages.
async fn open_session(
    server: &DevServer,
    token: &str,
    node: &str,
) -> Result<
    (
        tokio::sync::mpsc::Sender<proto::AgentMessage>,
        tonic::Streaming<proto::ControllerMessage>,
    ),
    tonic::Status,
> {
    let channel = tonic::transport::Endpoint::from_shared(server.addr.clone())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let bearer: MetadataValue<_> = format!("Bearer {token}").parse().unwrap();
    let mut agents = proto::agent_service_client::AgentServiceClient::with_interceptor(
        channel,
        move |mut r: tonic::Request<()>| {
            r.metadata_mut().insert("authorization", bearer.clone());
            Ok(r)
        },
    );
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    tx.send(proto::AgentMessage {
        msg: Some(proto::agent_message::Msg::Register(proto::RegisterAgent {
            node: node.into(),
            cpu_millis: 8000,
            memory_mib: 16384,
            gpus: (0..8)
                .map(|i| proto::GpuInfo {
                    index: i,
                    uuid: format!("GPU-{node}-{i}"),
                    model: "FAKE".into(),
                    memory_mib: 81920,
                    ..Default::default()
                })
                .collect(),
            discovery: "declared".into(),
            ..Default::default()
        })),
    })
    .await
    .unwrap();
    let mut stream = agents
        .session(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await?
        .into_inner();
    match stream.message().await? {
        Some(proto::ControllerMessage {
            msg: Some(proto::controller_message::Msg::Registered(r)),
        }) => {
            assert_eq!(r.node, node);
            assert!(r.fence_after_ms > 0, "the controller fences: {r:?}");
        }
        other => panic!("expected the registration's answer, got {other:?}"),
    }
    Ok((tx, stream))
}

/// Defect 5: one agent token could register a made-up node, receive other
/// tenants' launches and report them done; a revoked token's session kept
/// receiving launches. Agent tokens are bound to one node now, a connected
/// node cannot be registered twice, and revoking a token ends its session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_tokens_register_only_their_node_and_die_with_their_revocation() {
    let dir = tempdir();
    let server = DevServer::start(dir.path()).await;
    let admin = server.admin().await;
    let issued = admin.admin().issue_agent_token("lab-1", "").await.unwrap();
    let token = issued.token.clone();
    assert_eq!(issued.info.as_ref().unwrap().node, "lab-1");
    // Another node's name, or a made-up one: refused, nothing registered.
    for other in ["lab-2", "dev-1"] {
        let err = open_session(&server, &token, other).await.expect_err(other);
        assert_eq!(err.code(), tonic::Code::PermissionDenied, "{}", err.message());
        assert!(err.message().contains("lab-1"), "{}", err.message());
    }
    // An agent token must name its node.
    let err = admin
        .admin()
        .issue_token(proto::Role::Agent, None, "")
        .await
        .expect_err("an unbound agent token");
    assert_eq!(err.field(), Some("node"));
    let nodes = admin.nodes().await.unwrap();
    assert_eq!(nodes.len(), 2, "only the dev nodes: {nodes:?}");

    // Its own node registers; a second agent for it while it lives does not.
    let (_tx, mut stream) = open_session(&server, &token, "lab-1").await.unwrap();
    let err = open_session(&server, &token, "lab-1").await.expect_err("twice");
    assert_eq!(err.code(), tonic::Code::AlreadyExists, "{}", err.message());

    // Revoked: the session ends at once with UNAUTHENTICATED, the node is
    // down, and a job only it could run is not launched there.
    let id = issued.info.unwrap().id;
    admin.admin().revoke_token(&id).await.unwrap();
    let ended = tokio::time::timeout(Duration::from_secs(1), async {
        loop {
            match stream.message().await {
                Ok(Some(_)) => continue,
                Ok(None) => return None,
                Err(e) => return Some(e.code()),
            }
        }
    })
    .await
    .expect("the session ends within a second of the revocation");
    assert_eq!(ended, Some(tonic::Code::Unauthenticated));
    let lab = admin
        .nodes()
        .await
        .unwrap()
        .into_iter()
        .find(|n| n.name == "lab-1")
        .unwrap();
    assert_eq!(lab.state(), proto::NodeState::Down);
    let client = server.client().await;
    let job = client
        .submit(JobSpec::new("true").gpus(1).gpu_model("FAKE"))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        client.get(&job.id).await.unwrap().state(),
        allot_sdk::JobState::Pending
    );
    let err = open_session(&server, &token, "lab-1").await.expect_err("revoked");
    assert_eq!(err.code(), tonic::Code::Unauthenticated);
}

/// Defect 8: a submission that failed with a transport error may still have
/// created its job, and there was no way to retry safely. A request id
/// makes the retry return that job; the CLI and the SDK set one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_submission_retried_with_its_request_id_creates_one_job() {
    let dir = tempdir();
    let server = DevServer::start(dir.path()).await;
    let client = server.client().await;
    let spec = || JobSpec::new("true").gpus(64);
    let a = client.submit_with_request_id(spec(), "retry-me-1").await.unwrap();
    let b = client.submit_with_request_id(spec(), "retry-me-1").await.unwrap();
    assert_eq!(a.id, b.id);
    let err = client
        .submit_with_request_id(spec().gpus(63), "retry-me-1")
        .await
        .expect_err("the same id for another spec");
    assert_eq!(err.field(), Some("request_id"), "{}", err.message());
    let err = client
        .submit_with_request_id(spec(), "not a valid id!")
        .await
        .expect_err("a malformed id");
    assert_eq!(err.field(), Some("request_id"));
    // The id outlives the controller.
    let mut server = server;
    server.kill().await;
    drop(client);
    let server = DevServer::start(dir.path()).await;
    let client = server.client().await;
    let c = client.submit_with_request_id(spec(), "retry-me-1").await.unwrap();
    assert_eq!(c.id, a.id);
    assert_eq!(client.list_all(Default::default()).await.unwrap().len(), 1);

    // Tenants and tokens too: a retried create returns the tenant; a
    // retried issue names the token it issued rather than issuing another.
    let channel = tonic::transport::Endpoint::from_shared(server.addr.clone())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let bearer: MetadataValue<_> = format!("Bearer {}", server.admin_token).parse().unwrap();
    let mut admin = proto::admin_service_client::AdminServiceClient::with_interceptor(
        channel,
        move |mut r: tonic::Request<()>| {
            r.metadata_mut().insert("authorization", bearer.clone());
            Ok(r)
        },
    );
    let create = || proto::CreateTenantRequest {
        name: "retried".into(),
        request_id: "t-1".into(),
    };
    let t1 = admin.create_tenant(create()).await.unwrap().into_inner();
    let t2 = admin.create_tenant(create()).await.unwrap().into_inner();
    assert_eq!(t1, t2);
    let err = admin
        .create_tenant(proto::CreateTenantRequest {
            name: "retried".into(),
            request_id: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::AlreadyExists);
    let issue = || proto::IssueTokenRequest {
        role: proto::Role::Tenant as i32,
        tenant: "retried".into(),
        request_id: "k-1".into(),
        ..Default::default()
    };
    let first = admin.issue_token(issue()).await.unwrap().into_inner();
    let err = admin.issue_token(issue()).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::AlreadyExists);
    assert!(
        err.message().contains(&first.info.unwrap().id),
        "{}",
        err.message()
    );
    let tokens = admin
        .list_tokens(proto::ListTokensRequest {})
        .await
        .unwrap()
        .into_inner()
        .tokens;
    assert_eq!(tokens.iter().filter(|t| t.tenant == "retried").count(), 1);
}

/// Defect 9: every lease-hour part was rounded to the cent, so short jobs
/// billed nothing. Five jobs of about a second on four H100s at the dev
/// rate card's 4.00 USD per GPU-hour cost about 0.44 cents each: 2 cents
/// together, where the old rounding billed 0.00 USD.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn short_jobs_are_billed_exactly_not_rounded_away() {
    let dir = tempdir();
    let server = DevServer::start(dir.path()).await;
    let client = server.client().await;
    let mut ids = Vec::new();
    for _ in 0..5 {
        let j = client
            .submit(JobSpec::new("sleep").args(["0.8"]).gpus(4).gpu_model("H100-80GB"))
            .await
            .unwrap();
        ids.push(j.id);
    }
    let mut micros = 0i128;
    let mut from = i64::MAX;
    let mut to = 0;
    for id in &ids {
        let j = wait_final(&client, id).await;
        for l in &j.leases {
            let m: i128 = l.cost_micros.parse().unwrap();
            assert!(m > 0 && m < 1_000_000, "each GPU's lease is under a cent: {m}");
            micros += m;
            from = from.min(l.reserved_at_unix_ms);
            to = to.max(l.ended_at_unix_ms);
        }
    }
    let usage = client.usage(from, to + 1, &["job"], None).await.unwrap();
    let total = &usage.totals[0];
    assert_eq!(total.cost_micros, micros.to_string());
    let cents = (micros + 500_000) / 1_000_000;
    assert!(cents >= 1, "{micros} micros");
    assert_eq!(i128::from(total.cost_minor), cents, "{total:?}");
    // Per job the rows are rounded by running totals: they add up.
    assert_eq!(
        usage.rows.iter().map(|r| r.cost_minor).sum::<i64>(),
        total.cost_minor
    );
}

/// Raw bytes as a gRPC message, to send what no well-behaved client would.
#[derive(Debug, Clone, Default)]
struct Raw;

struct RawEncoder;
struct RawDecoder;

impl tonic::codec::Encoder for RawEncoder {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn encode(&mut self, item: Vec<u8>, dst: &mut tonic::codec::EncodeBuf<'_>) -> Result<(), tonic::Status> {
        use bytes::BufMut;
        dst.put_slice(&item);
        Ok(())
    }
}

impl tonic::codec::Decoder for RawDecoder {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn decode(&mut self, src: &mut tonic::codec::DecodeBuf<'_>) -> Result<Option<Vec<u8>>, tonic::Status> {
        use bytes::Buf;
        let mut v = vec![0; src.remaining()];
        src.copy_to_slice(&mut v);
        Ok(Some(v))
    }
}

impl tonic::codec::Codec for Raw {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = RawEncoder;
    type Decoder = RawDecoder;
    fn encoder(&mut self) -> RawEncoder {
        RawEncoder
    }
    fn decoder(&mut self) -> RawDecoder {
        RawDecoder
    }
}

async fn raw_call(server: &DevServer, path: &'static str, body: Vec<u8>) -> tonic::Status {
    let channel = tonic::transport::Endpoint::from_shared(server.addr.clone())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.unwrap();
    let mut req = tonic::Request::new(body);
    req.metadata_mut().insert(
        "authorization",
        format!("Bearer {}", server.token).parse().unwrap(),
    );
    grpc.unary(
        req,
        tonic::codegen::http::uri::PathAndQuery::from_static(path),
        Raw,
    )
    .await
    .expect_err("a malformed message is refused")
}

/// Defect 11: status codes and messages a client can act on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_messages_get_the_right_codes_and_the_server_reports_every_service() {
    let dir = tempdir();
    let server = DevServer::start(dir.path()).await;
    // GetJobRequest.id (field 1, a string) holding invalid UTF-8.
    let bad_utf8 = raw_call(
        &server,
        "/allot.v1.JobService/GetJob",
        vec![0x0a, 0x02, 0xc3, 0x28],
    )
    .await;
    assert_eq!(bad_utf8.code(), tonic::Code::InvalidArgument, "{bad_utf8:?}");
    // A length that runs past the end of the message.
    let truncated = raw_call(&server, "/allot.v1.JobService/GetJob", vec![0x0a, 0x05, 0x61]).await;
    assert_eq!(truncated.code(), tonic::Code::InvalidArgument, "{truncated:?}");
    // Over the 4 MiB a message may have.
    let mut big = vec![0x0a, 0x80, 0x80, 0x80, 0x03];
    big.resize(5 + (6 << 20), b'a');
    let oversize = raw_call(&server, "/allot.v1.JobService/GetJob", big).await;
    assert_eq!(oversize.code(), tonic::Code::ResourceExhausted, "{oversize:?}");
    // An unknown method is still UNIMPLEMENTED.
    let unknown = raw_call(&server, "/allot.v1.JobService/Nope", vec![]).await;
    assert_eq!(unknown.code(), tonic::Code::Unimplemented);

    // Health: every service by name, and the server.
    let channel = tonic::transport::Endpoint::from_shared(server.addr.clone())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel.clone());
    for svc in [
        "",
        "allot.v1.JobService",
        "allot.v1.NodeService",
        "allot.v1.AdminService",
        "allot.v1.UsageService",
        "allot.v1.PluginService",
        "allot.v1.AgentService",
    ] {
        let r = health
            .check(tonic_health::pb::HealthCheckRequest { service: svc.into() })
            .await
            .unwrap_or_else(|e| panic!("{svc}: {e}"));
        assert_eq!(r.into_inner().status, 1, "{svc} is SERVING");
    }

    // Reflection: a missing symbol is an error answer, and the stream goes on.
    use tonic_reflection::pb::v1::{
        ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
        server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
    };
    let mut reflection = ServerReflectionClient::new(channel);
    let asks = [
        MessageRequest::FileContainingSymbol("allot.v1.NoSuchThing".into()),
        MessageRequest::ListServices(String::new()),
        MessageRequest::FileContainingSymbol("allot.v1.JobService".into()),
    ];
    let requests = futures::stream::iter(asks.into_iter().map(|m| ServerReflectionRequest {
        host: String::new(),
        message_request: Some(m),
    }));
    let mut answers = reflection
        .server_reflection_info(requests)
        .await
        .unwrap()
        .into_inner();
    let mut got = Vec::new();
    while let Some(a) = answers.message().await.unwrap() {
        got.push(a.message_response.unwrap());
        if got.len() == 3 {
            break;
        }
    }
    assert!(
        matches!(&got[0], MessageResponse::ErrorResponse(e) if e.error_code == tonic::Code::NotFound as i32),
        "{:?}",
        got[0]
    );
    match &got[1] {
        MessageResponse::ListServicesResponse(l) => {
            assert!(l.service.iter().any(|s| s.name == "allot.v1.JobService"), "{l:?}");
        }
        other => panic!("{other:?}"),
    }
    assert!(
        matches!(&got[2], MessageResponse::FileDescriptorResponse(f) if !f.file_descriptor_proto.is_empty())
    );

    // A log offset past the end reads nothing from the end, and shows no
    // path of the node's.
    let client = server.client().await;
    let job = client.submit(JobSpec::new("echo").args(["hello"])).await.unwrap();
    wait_final(&client, &job.id).await;
    let chunk = client.logs(&job.id, 1 << 40, 0).await.unwrap();
    assert!(chunk.data.is_empty());
    assert_eq!(chunk.next_offset, 6);
    assert!(chunk.complete);
    assert!(!chunk.path.contains('/'), "{}", chunk.path);
    // Whitespace around a MIG profile or an amount is refused.
    let err = client
        .submit(JobSpec::new("true").mig(" 1g.10gb"))
        .await
        .unwrap_err();
    assert_eq!(err.field(), Some("spec.resources.mig_profile"));
    let admin = server.admin().await;
    let err = admin.set_budget("default", " 5.00", "").await.unwrap_err();
    assert_eq!(err.field(), Some("spend_limit"), "{}", err.message());
}

/// Defect 12: in dev mode a tenant's job could read `<data-dir>/admin.token`
/// and become admin, and read other tenants' output. Dev mode writes no
/// token file now, and each job runs in a mount namespace where the ledger,
/// the agents' own files, other nodes' state and other jobs' scratch
/// directories are empty.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dev_mode_job_cannot_read_the_admin_token_the_ledger_or_other_jobs_output() {
    let dir = tempdir();
    let server = DevServer::start(dir.path()).await;
    let client = server.client().await;
    assert!(
        !dir.path().join("admin.token").exists(),
        "dev mode writes no token file"
    );
    // A tenant's plugin: its code is in the data dir's plugin files.
    client
        .plugins()
        .add(
            "cc",
            crate::plugin_kit::wasm("require_cost_center"),
            &allot_sdk::Scope::Own,
        )
        .await
        .unwrap();
    assert!(std::fs::read_dir(dir.path().join("plugins")).unwrap().count() >= 2);
    let secret = client
        .submit(JobSpec::new("sh").args([
            "-c",
            "echo tenant-secret; mkdir -p private && echo private-x > private/f; sleep 30",
        ]))
        .await
        .unwrap();
    let secret = wait_state(&client, &secret.id, allot_sdk::JobState::Running).await;
    let node = secret.placement.as_ref().unwrap().node.clone();
    first_line(&server.output_file(&node, &secret.id)).await;
    let data = dir.path().display().to_string();
    let other = if node == "dev-1" { "dev-2" } else { "dev-1" };
    let probe = format!(
        "ls -A {data}/ledger | wc -l; \
         ls -A {data}/plugins | wc -l; \
         cat {data}/agents/{node}/logs/allot-{id}.out 2>/dev/null | grep -c '^tenant-secret$'; \
         find {data}/agents/{node}/logs {data}/agents/{node}/run -mindepth 1 2>/dev/null | wc -l; \
         find {data}/agents/{other}/logs {data}/agents/{other}/run -mindepth 1 2>/dev/null | wc -l; \
         cat {data}/agents/{node}/jobs/{id}/private/f 2>/dev/null | grep -c '^private-x$'; \
         echo mine > own && cat own",
        id = secret.id
    );
    // From the same node, then (with it drained) from the other one.
    let admin = server.admin().await;
    for drain in [false, true] {
        if drain {
            admin.drain(&node, "snoop from the other node").await.unwrap();
        }
        let snoop = client
            .submit(
                JobSpec::new("sh")
                    .args(["-c", &probe])
                    .node_label("allot.dev/mode", "dev"),
            )
            .await
            .unwrap();
        let done = wait_final(&client, &snoop.id).await;
        assert_eq!(done.state(), allot_sdk::JobState::Succeeded, "{}", done.reason);
        let node2 = done.placement.as_ref().unwrap().node.clone();
        assert_eq!(node2 != node, drain);
        let out = std::fs::read_to_string(server.output_file(&node2, &snoop.id)).unwrap();
        let lines: Vec<&str> = out.lines().map(str::trim).collect();
        // The ledger, the plugin files, the node's logs, run files and the
        // other node's state are empty; the other job's scratch is not there; its own is.
        assert_eq!(
            lines,
            ["0", "0", "0", "0", "0", "0", "mine"],
            "from {node2} on {node}: {out}"
        );
    }
    client.kill(&secret.id, "done").await.unwrap();
    wait_final(&client, &secret.id).await;
}
