use super::*;

const POD: PodKey = PodKey::from_inode(1);
const OTHER_POD: PodKey = PodKey::from_inode(2);

/// A listing of the record tree, taken now, with records in `namespaces`.
fn listing(namespaces: impl IntoIterator<Item = u64>) -> Recorded {
    Recorded {
        at: Instant::now(),
        namespaces: Some(namespaces.into_iter().collect()),
    }
}

fn take(quota: &Quota, pod: PodKey, netns: u64) -> Result<Held, Refusal> {
    quota.take_listed(pod, netns, &listing([]))
}

#[test]
fn a_network_namespace_gets_its_quota_and_no_more_and_others_are_not_counted_against_it() {
    let quota = Quota::default();
    let held: Vec<Held> = (0..MAX_REQUESTS_PER_NETNS)
        .map(|_| take(&quota, POD, 10).expect("within the quota"))
        .collect();
    assert_eq!(take(&quota, POD, 10).unwrap_err(), Refusal::NetnsRequests);
    // Another container of the pod shares its network namespace.
    assert_eq!(
        take(&quota, OTHER_POD, 10).unwrap_err(),
        Refusal::NetnsRequests
    );
    assert!(
        take(&quota, OTHER_POD, 20).is_ok(),
        "another pod is not held up"
    );
    drop(held);
    assert!(take(&quota, POD, 10).is_ok());
    let mut holdings = quota.lock();
    holdings.forget_unrecorded(&listing([]));
    assert!(holdings.netns.is_empty(), "no request is open");
    assert!(holdings.pods.is_empty(), "neither pod left a record");
}

#[test]
fn a_pod_that_makes_network_namespaces_gets_no_more_requests_than_its_own_quota() {
    let quota = Quota::default();
    let held: Vec<Held> = (0..MAX_REQUESTS_PER_POD)
        .map(|n| take(&quota, POD, 10 + n as u64).expect("within the quota"))
        .collect();
    assert_eq!(take(&quota, POD, 99).unwrap_err(), Refusal::PodRequests);
    assert!(
        take(&quota, OTHER_POD, 99).is_ok(),
        "another pod is not held up"
    );
    drop(held);
    assert!(take(&quota, POD, 99).is_ok());
}

#[test]
fn a_pod_has_records_in_a_bounded_number_of_live_network_namespaces() {
    let quota = Quota::default();
    let namespaces: Vec<u64> = (100..100 + MAX_NAMESPACES_PER_POD as u64).collect();
    // Each drain leaves a record.
    let recorded = || listing(namespaces.iter().copied());
    for &netns in &namespaces {
        drop(
            quota
                .take_listed(POD, netns, &recorded())
                .expect("within the quota"),
        );
    }
    let recorded = recorded();
    assert_eq!(
        quota.take_listed(POD, 1, &recorded).unwrap_err(),
        Refusal::Namespaces
    );
    assert!(
        quota.take_listed(POD, namespaces[0], &recorded).is_ok(),
        "a namespace the pod has records in already"
    );
    assert!(quota.take_listed(OTHER_POD, 1, &recorded).is_ok());
    // The sweep removed one namespace's records: its place is free.
    let swept = listing(namespaces[1..].iter().copied());
    assert!(quota.take_listed(POD, 1, &swept).is_ok());
    assert_eq!(
        quota.take_listed(POD, 2, &swept).unwrap_err(),
        Refusal::Namespaces
    );
}

#[test]
fn a_namespace_released_after_the_listing_began_is_still_counted() {
    let quota = Quota::default();
    let recorded = listing([]);
    drop(take(&quota, POD, 10).unwrap());
    quota.lock().forget_unrecorded(&recorded);
    assert!(
        quota.lock().pods[&POD].namespaces.contains_key(&10),
        "its record may have been written after the listing"
    );
    quota.lock().forget_unrecorded(&listing([]));
    assert!(quota.lock().pods.is_empty());
}

#[test]
fn an_unreadable_record_tree_forgets_nothing() {
    let quota = Quota::default();
    drop(take(&quota, POD, 10).unwrap());
    let unreadable = Recorded {
        at: Instant::now(),
        namespaces: None,
    };
    quota.lock().forget_unrecorded(&unreadable);
    assert!(quota.lock().pods[&POD].namespaces.contains_key(&10));
}
