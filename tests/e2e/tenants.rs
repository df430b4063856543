//! Tenants see and change only their own jobs.

use allot_sdk::{Client, Code, JobSpec, JobState, ListJobs, proto};

use crate::harness::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_cannot_see_get_or_cancel_another_tenants_job() {
    let dir = tempdir();
    let server = DevServer::start(dir.path()).await;
    let admin = server.admin().await;
    let a = server.client().await; // tenant "default"
    admin.admin().create_tenant("team-b").await.unwrap();
    let err = admin.admin().create_tenant("team-b").await.unwrap_err();
    assert_eq!(err.code(), Code::AlreadyExists);
    let issued = admin
        .admin()
        .issue_token(proto::Role::Tenant, Some("team-b"), "tests")
        .await
        .unwrap();
    let b = Client::connect(server.addr.clone(), &issued.token).await.unwrap();
    assert_eq!(b.admin().who_am_i().await.unwrap().tenant, "team-b");

    let bs = b
        .submit(JobSpec::new("sleep").args(["600"]).gpus(1))
        .await
        .unwrap();
    assert_eq!(bs.tenant, "team-b");
    let as_ = a.submit(JobSpec::new("true")).await.unwrap();
    wait_state(&b, &bs.id, JobState::Running).await;

    assert_eq!(a.get(&bs.id).await.unwrap_err().code(), Code::PermissionDenied);
    assert_eq!(
        a.cancel(&bs.id, "").await.unwrap_err().code(),
        Code::PermissionDenied
    );
    assert_eq!(
        a.logs(&bs.id, 0, 0).await.unwrap_err().code(),
        Code::PermissionDenied
    );
    assert!(a.watch(&bs.id).await.is_err());
    assert_eq!(b.get(&as_.id).await.unwrap_err().code(), Code::PermissionDenied);

    let a_jobs = a.list_all(ListJobs::default()).await.unwrap();
    assert_eq!(
        a_jobs.iter().map(|j| j.id.as_str()).collect::<Vec<_>>(),
        vec![as_.id.as_str()]
    );
    let b_jobs = b.list_all(ListJobs::default()).await.unwrap();
    assert_eq!(
        b_jobs.iter().map(|j| j.id.as_str()).collect::<Vec<_>>(),
        vec![bs.id.as_str()]
    );
    let err = a
        .list(ListJobs {
            tenant: Some("team-b".into()),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    // The admin sees both, and can filter.
    assert_eq!(admin.list_all(ListJobs::default()).await.unwrap().len(), 2);
    let only_b = admin
        .list_all(ListJobs {
            tenant: Some("team-b".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(only_b.len(), 1);

    // Node listings show that a GPU is held, but not by which other tenant's job.
    let nodes = a.nodes().await.unwrap();
    let holders: Vec<&proto::Holder> = nodes
        .iter()
        .flat_map(|n| n.gpus.iter().flat_map(|g| g.holders.iter()))
        .collect();
    assert_eq!(holders.len(), 1);
    assert!(holders[0].job_id.is_empty());
    let nodes = b.nodes().await.unwrap();
    let holders: Vec<&proto::Holder> = nodes
        .iter()
        .flat_map(|n| n.gpus.iter().flat_map(|g| g.holders.iter()))
        .collect();
    assert_eq!(holders[0].job_id, bs.id);

    // B's job still runs; B may cancel it.
    assert_eq!(b.get(&bs.id).await.unwrap().state(), JobState::Running);
    b.cancel(&bs.id, "").await.unwrap();
    assert_eq!(wait_final(&b, &bs.id).await.state(), JobState::Cancelled);

    // A revoked token stops working at once.
    admin
        .admin()
        .revoke_token(&issued.info.unwrap().id)
        .await
        .unwrap();
    assert_eq!(
        b.list(ListJobs::default()).await.unwrap_err().code(),
        Code::Unauthenticated
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listing_pages_through_jobs_oldest_first() {
    let dir = tempdir();
    let server = DevServer::start(dir.path()).await;
    let client = server.client().await;
    let mut ids = Vec::new();
    for _ in 0..7 {
        ids.push(client.submit(JobSpec::new("true").gpus(64)).await.unwrap().id);
    }
    let mut seen = Vec::new();
    let mut q = ListJobs {
        page_size: 3,
        ..Default::default()
    };
    loop {
        let page = client.list(q.clone()).await.unwrap();
        assert!(page.jobs.len() <= 3);
        seen.extend(page.jobs.into_iter().map(|j| j.id));
        match page.next_page_token {
            Some(t) => q.page_token = Some(t),
            None => break,
        }
    }
    assert_eq!(seen, ids);
    let running = client
        .list_all(ListJobs {
            states: vec![JobState::Running],
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(running.is_empty());
}
