//! Every malformed request gets a clear error and changes nothing.

use allot_sdk::{Client, Code, JobSpec, proto};
use tonic::metadata::MetadataValue;

use crate::harness::*;

async fn expect_invalid(client: &Client, spec: JobSpec, field: &str) {
    let err = client
        .submit(spec.clone())
        .await
        .expect_err(&format!("{spec:?} must be refused"));
    assert_eq!(err.code(), Code::InvalidArgument, "{field}: {}", err.message());
    assert_eq!(err.field(), Some(field), "{}", err.message());
    assert!(
        err.message().starts_with(field),
        "the message names the field: {}",
        err.message()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_submissions_are_refused_naming_the_field() {
    let dir = tempdir();
    let server = DevServer::start(dir.path()).await;
    let client = server.client().await;
    let ok = || JobSpec::new("true");
    expect_invalid(&client, ok().gpus(0), "spec.resources.gpus").await;
    expect_invalid(&client, ok().gpus(-2), "spec.resources.gpus").await;
    expect_invalid(&client, ok().gpus(100_000), "spec.resources.gpus").await;
    expect_invalid(&client, ok().mig("5g.50gb"), "spec.resources.mig_profile").await;
    expect_invalid(&client, ok().mig(""), "spec.resources.mig_profile").await;
    expect_invalid(&client, ok().gpu_fraction(0, 4), "spec.resources.gpu_fraction").await;
    expect_invalid(&client, ok().gpu_fraction(5, 4), "spec.resources.gpu_fraction").await;
    expect_invalid(&client, ok().gpu_fraction(1, 0), "spec.resources.gpu_fraction").await;
    expect_invalid(&client, ok().gpu_fraction(1, 11), "spec.resources.gpu_fraction").await;
    expect_invalid(&client, JobSpec::new(""), "spec.command").await;
    expect_invalid(&client, JobSpec::new("   "), "spec.command").await;
    expect_invalid(&client, ok().time_limit_ms(0), "spec.time_limit_ms").await;
    expect_invalid(&client, ok().time_limit_ms(-5), "spec.time_limit_ms").await;
    expect_invalid(&client, ok().grace_period_ms(-1), "spec.grace_period_ms").await;
    expect_invalid(&client, ok().cpu_millis(-1), "spec.resources.cpu_millis").await;
    expect_invalid(&client, ok().memory_mib(-1), "spec.resources.memory_mib").await;
    expect_invalid(
        &client,
        ok().gpus(1).gpu_memory_mib(1024),
        "spec.resources.gpu_memory_mib",
    )
    .await;
    expect_invalid(&client, ok().working_dir("relative/dir"), "spec.working_dir").await;
    expect_invalid(&client, ok().env("CUDA_VISIBLE_DEVICES", "0"), "spec.env").await;
    expect_invalid(&client, ok().env("ALLOT_JOB_ID", "x"), "spec.env").await;
    expect_invalid(&client, ok().env("", "x"), "spec.env").await;
    expect_invalid(&client, ok().project("Not A Name"), "spec.project").await;
    expect_invalid(&client, ok().tag("", "x"), "spec.tags").await;
    expect_invalid(&client, ok().gpu_fraction(1, 4).spread(true), "spec.spread").await;
    expect_invalid(&client, ok().spread(true), "spec.spread").await;
    expect_invalid(&client, ok().gpu_model("H100 80GB"), "spec.gpu_models").await;
    expect_invalid(&client, ok().script("echo no interpreter line\n"), "spec.script").await;
    expect_invalid(
        &client,
        ok().script(format!("#!/bin/sh\n{}", "#".repeat(70_000))),
        "spec.script",
    )
    .await;
    expect_invalid(
        &client,
        ok().gpus(1).node_label("zone", "a\u{7}"),
        "spec.node_labels",
    )
    .await;
    expect_invalid(&client, ok().gpus(1).min_runtime_ms(0), "spec.min_runtime_ms").await;
    expect_invalid(
        &client,
        ok().gpus(1).checkpoint_interval_ms(-1),
        "spec.checkpoint_interval_ms",
    )
    .await;

    // Another tenant's name in the spec is not a tenant token's to use.
    let err = client.submit(ok().tenant("someone-else")).await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    // An admin must say which tenant.
    let admin = server.admin().await;
    let err = admin.submit(ok()).await.unwrap_err();
    assert_eq!(
        (err.code(), err.field()),
        (Code::InvalidArgument, Some("spec.tenant"))
    );
    let err = admin.submit(ok().tenant("no-such-tenant")).await.unwrap_err();
    assert_eq!(
        (err.code(), err.field()),
        (Code::InvalidArgument, Some("spec.tenant"))
    );

    // A request without a spec at all, straight through the generated client.
    let channel = tonic::transport::Endpoint::from_shared(server.addr.clone())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let bearer: MetadataValue<_> = format!("Bearer {}", server.token).parse().unwrap();
    let mut raw = proto::job_service_client::JobServiceClient::with_interceptor(
        channel,
        move |mut r: tonic::Request<()>| {
            r.metadata_mut().insert("authorization", bearer.clone());
            Ok(r)
        },
    );
    let err = raw
        .submit_job(proto::SubmitJobRequest {
            spec: None,
            request_id: String::new(),
            hold: false,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(err.message().starts_with("spec"), "{}", err.message());
    let err = raw
        .list_jobs(proto::ListJobsRequest {
            states: vec![99],
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(err.message().starts_with("states"), "{}", err.message());
    let err = raw
        .list_jobs(proto::ListJobsRequest {
            page_token: "garbage".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert!(err.message().starts_with("page_token"), "{}", err.message());

    // Nothing was created by any of it.
    assert!(admin.list_all(Default::default()).await.unwrap().is_empty());
    assert!(client.list_all(Default::default()).await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_and_malformed_ids_and_tokens_are_refused() {
    let dir = tempdir();
    let server = DevServer::start(dir.path()).await;
    let client = server.client().await;
    let unknown = "01a20915-3cc4-7030-8662-000000000000";
    assert_eq!(client.get(unknown).await.unwrap_err().code(), Code::NotFound);
    assert_eq!(
        client.cancel(unknown, "").await.unwrap_err().code(),
        Code::NotFound
    );
    assert_eq!(
        client.logs(unknown, 0, 0).await.unwrap_err().code(),
        Code::NotFound
    );
    match client.watch(unknown).await {
        Err(e) => assert_eq!(e.code(), Code::NotFound),
        Ok(_) => panic!("watching an unknown job must fail"),
    }
    for bad in ["", "not-a-uuid", "123"] {
        let err = client.get(bad).await.unwrap_err();
        assert_eq!(
            (err.code(), err.field()),
            (Code::InvalidArgument, Some("id")),
            "{bad:?}"
        );
        let err = client.cancel(bad, "").await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument);
    }

    // No token, a wrong one, a malformed header: Unauthenticated, for every service.
    let wrong = Client::connect(server.addr.clone(), "allot_wrong").await.unwrap();
    assert_eq!(
        wrong.list(Default::default()).await.unwrap_err().code(),
        Code::Unauthenticated
    );
    assert_eq!(wrong.nodes().await.unwrap_err().code(), Code::Unauthenticated);
    assert_eq!(
        wrong.admin().who_am_i().await.unwrap_err().code(),
        Code::Unauthenticated
    );
    let err = wrong.submit(JobSpec::new("true")).await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    let channel = tonic::transport::Endpoint::from_shared(server.addr.clone())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut anonymous = proto::job_service_client::JobServiceClient::new(channel.clone());
    let err = anonymous
        .list_jobs(proto::ListJobsRequest::default())
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unauthenticated);
    assert!(err.message().contains("bearer"), "{}", err.message());
    let mut basic =
        proto::job_service_client::JobServiceClient::with_interceptor(channel, |mut r: tonic::Request<()>| {
            r.metadata_mut()
                .insert("authorization", "Basic dXNlcjpwdw==".parse().unwrap());
            Ok(r)
        });
    let err = basic
        .list_jobs(proto::ListJobsRequest::default())
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unauthenticated);

    // A tenant token cannot open an agent session or do admin work.
    let err = client.admin().create_tenant("x").await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    let err = client
        .admin()
        .issue_token(proto::Role::Admin, None, "")
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    assert!(
        server
            .admin()
            .await
            .list_all(Default::default())
            .await
            .unwrap()
            .is_empty()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_queues_and_unknown_queues_are_refused_naming_the_field() {
    let dir = tempdir();
    let server = DevServer::start(dir.path()).await;
    let client = server.client().await;
    let admin = server.admin().await;
    expect_invalid(&client, JobSpec::new("true").queue("nope"), "spec.queue").await;
    expect_invalid(&client, JobSpec::new("true").queue("No Such"), "spec.queue").await;
    let ok = || proto::Queue {
        name: "gpu-a".into(),
        ..Default::default()
    };
    let bad: Vec<(proto::Queue, &str)> = vec![
        (
            proto::Queue {
                name: String::new(),
                ..ok()
            },
            "queue.name",
        ),
        (
            proto::Queue {
                name: "Gpu A".into(),
                ..ok()
            },
            "queue.name",
        ),
        (
            proto::Queue {
                max_time_limit_ms: Some(0),
                ..ok()
            },
            "queue.max_time_limit_ms",
        ),
        (
            proto::Queue {
                default_time_limit_ms: Some(7_200_000),
                max_time_limit_ms: Some(3_600_000),
                ..ok()
            },
            "queue.default_time_limit_ms",
        ),
        (
            proto::Queue {
                tenants: vec!["a b".into()],
                ..ok()
            },
            "queue.tenants",
        ),
        (
            proto::Queue {
                gpu_models: vec![String::new()],
                ..ok()
            },
            "queue.gpu_models",
        ),
    ];
    for (q, field) in bad {
        let err = admin
            .queues()
            .create(q.clone())
            .await
            .expect_err(&format!("{q:?}"));
        assert_eq!(err.code(), Code::InvalidArgument, "{field}: {}", err.message());
        assert_eq!(err.field(), Some(field), "{}", err.message());
    }
    let err = admin
        .queues()
        .update(ok(), vec!["name".into()])
        .await
        .unwrap_err();
    assert_eq!(err.field(), Some("update_mask"), "{}", err.message());
    let err = admin.queues().update(ok(), vec![]).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{}", err.message());
    let err = client.queues().create(ok()).await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{}", err.message());
    // Nothing of it was made.
    let names: Vec<String> = admin
        .queues()
        .list()
        .await
        .unwrap()
        .into_iter()
        .map(|q| q.queue.unwrap().name)
        .collect();
    assert_eq!(names, ["default"]);
}
