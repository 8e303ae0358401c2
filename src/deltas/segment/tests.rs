use super::*;

fn at(ms: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(1_790_000_000_000 + ms).unwrap()
}

/// Revisions 11..=15 as etcd makes them: puts of new and old keys, a transaction of several changes,
/// a delete, a key bound to a lease, a binary value.
fn history() -> Vec<Revision> {
    vec![
        Revision { revision: 11, received: at(0), events: vec![Event::put(b"/a", b"1", 11, 11, 1, 0)], leases: vec![] },
        Revision { revision: 12, received: at(5), events: vec![Event::put(b"/a", b"2", 11, 12, 2, 0)], leases: vec![] },
        Revision {
            revision: 13,
            received: at(5),
            events: vec![Event::put(b"/b", &[0, 255, 10], 13, 13, 1, 0x694d), Event::delete(b"/a", 13)],
            leases: vec![Lease { id: 0x694d, ttl: 3600 }],
        },
        Revision { revision: 14, received: at(900), events: vec![Event::delete(b"/b", 14)], leases: vec![] },
        Revision {
            revision: 15,
            received: at(901),
            events: vec![Event::put(b"/a", b"", 15, 15, 1, 0)],
            leases: vec![],
        },
    ]
}

fn written(revisions: &[Revision]) -> (Vec<u8>, Summary) {
    let mut writer = Writer::default();
    for r in revisions {
        writer.push(r).unwrap();
    }
    writer.finish().unwrap()
}

#[test]
fn what_is_written_reads_back_the_same_and_is_summarised() {
    let (body, summary) = written(&history());
    assert_eq!(
        summary,
        Summary {
            first_revision: 11,
            last_revision: 15,
            revisions: 5,
            events: 6,
            first_received: at(0),
            last_received: at(901)
        }
    );
    assert_eq!(read(&body), Ok((history(), summary)));
}

/// Each event is etcd's `mvccpb.Event` on the wire: a protobuf reader with etcd's kv.proto opens it.
#[test]
fn events_are_etcds_own_protobuf() {
    let put = Event::put(b"a", b"b", 5, 7, 2, 0);
    assert_eq!(put.encode_to_vec(), [0x12, 12, 0x0a, 1, b'a', 0x10, 5, 0x18, 7, 0x20, 2, 0x2a, 1, b'b']);
    let delete = Event::delete(b"a", 9);
    assert_eq!(delete.encode_to_vec(), [0x08, 1, 0x12, 5, 0x0a, 1, b'a', 0x18, 9]);
}

#[test]
fn an_empty_writer_has_nothing_to_finish_and_an_empty_body_is_no_segment() {
    assert!(Writer::default().finish().is_none());
    assert_eq!(read(MAGIC), Err(SegmentError::NoRevision));
    assert_eq!(read(b""), Err(SegmentError::NotASegment));
    assert_eq!(read(b"etcd-backupd delta 2\n"), Err(SegmentError::NotASegment));
}

#[test]
fn a_revision_that_does_not_follow_is_refused_and_the_body_is_unchanged() {
    let mut writer = Writer::default();
    writer.push(&history()[0]).unwrap();
    let len = writer.len();
    for (skip, previous, found) in [(2, 11, 13), (0, 11, 11)] {
        assert_eq!(writer.push(&history()[skip]), Err(SegmentError::Gap { previous, found }));
    }
    let early = Revision { received: at(-1), ..history()[1].clone() };
    assert_eq!(writer.push(&early), Err(SegmentError::TimeBackwards { revision: 12 }));
    let empty = Revision { events: vec![], ..history()[1].clone() };
    assert_eq!(writer.push(&empty), Err(SegmentError::Empty { revision: 12 }));
    assert_eq!(writer.len(), len);
    writer.push(&history()[1]).unwrap();
    assert_eq!(writer.summary().unwrap().last_revision, 12);
}

#[test]
fn events_etcd_cannot_make_are_refused() {
    let mut cases: Vec<(Event, &str)> = vec![
        (Event { kind: PUT, kv: None }, "without a key"),
        (Event::put(b"", b"v", 20, 20, 1, 0), "empty key"),
        (Event::put(b"/k", b"v", 20, 19, 1, 0), "an event of revision 19"),
        (Event::put(b"/k", b"v", 20, 20, 0, 0), "impossible"),
        (Event::put(b"/k", b"v", 0, 20, 2, 0), "impossible"),
        (Event::put(b"/k", b"v", 21, 20, 2, 0), "impossible"),
        (Event::put(b"/k", b"v", 20, 20, 1, -1), "impossible"),
        (Event::put(b"/k", b"v", 20, 20, 2, 0), "disagree"),
        (Event::put(b"/k", b"v", 3, 20, 1, 0), "disagree"),
        (Event { kind: 2, ..Event::delete(b"/k", 20) }, "neither"),
    ];
    for field in 0..4 {
        let mut delete = Event::delete(b"/k", 20);
        let kv = delete.kv.as_mut().unwrap();
        match field {
            0 => kv.version = 1,
            1 => kv.create_revision = 3,
            2 => kv.lease = 7,
            _ => kv.value = b"v".to_vec(),
        }
        cases.push((delete, "a delete that carries a value"));
    }
    for (event, why) in cases {
        let revision = Revision { revision: 20, received: at(0), events: vec![event.clone()], leases: vec![] };
        let refused = Writer::default().push(&revision).unwrap_err();
        assert!(
            matches!(&refused, SegmentError::BadEvent { revision: 20, why: w } if w.contains(why)),
            "{event:?}: {refused}"
        );
        // Read back from bytes written by someone else, the same event is refused the same way.
        let mut body = MAGIC.to_vec();
        for n in [20, 1_790_000_000_000, 1] {
            encode_varint(n, &mut body);
        }
        event.encode_length_delimited(&mut body).unwrap();
        encode_varint(0, &mut body);
        assert_eq!(read(&body), Err(refused));
    }
    for good in [Event::put(b"/k", b"", 20, 20, 1, 5), Event::put(b"/k", b"v", 1, 20, 7, 0), Event::delete(b"/k", 20)] {
        check_event(20, &good).unwrap();
    }
}

/// A body cut anywhere either fails to read or reads as the revisions before the cut, unchanged (the
/// manifest's size and sha256 tell that apart); it never reads as something else.
#[test]
fn a_cut_body_is_refused_or_reads_as_a_prefix() {
    let (body, _) = written(&history());
    for cut in 0..body.len() {
        match read(&body[..cut]) {
            Ok((revisions, summary)) => {
                assert_eq!(revisions[..], history()[..revisions.len()], "cut at {cut}");
                assert_eq!(summary.revisions as usize, revisions.len());
                assert_eq!(written(&revisions).0, body[..cut], "only at a revision's end");
            }
            Err(e) => assert!(
                matches!(e, SegmentError::NotASegment | SegmentError::NoRevision | SegmentError::Truncated { .. }),
                "cut at {cut}: {e}"
            ),
        }
    }
}

/// Every single byte changed to every value: the read fails, or what it returns is checked (events
/// etcd could make, revisions in order), never a panic or a huge allocation.
#[test]
fn any_changed_byte_is_refused_or_still_checked() {
    let (body, _) = written(&history());
    for i in 0..body.len() {
        for value in 0..=255u8 {
            let mut changed = body.clone();
            changed[i] = value;
            if let Ok((revisions, summary)) = read(&changed) {
                let mut rewriter = Writer::default();
                for r in &revisions {
                    rewriter.push(r).expect("what reads back could have been written");
                }
                assert_eq!(rewriter.finish().unwrap().1, summary);
            }
        }
    }
}

#[test]
fn a_count_larger_than_the_body_is_refused_before_allocating() {
    let mut body = MAGIC.to_vec();
    for n in [11, 1_790_000_000_000, u64::MAX / 2] {
        encode_varint(n, &mut body);
    }
    assert_eq!(read(&body), Err(SegmentError::Truncated { after: 0 }));
}

#[test]
fn revisions_must_follow_each_other_in_a_body_too() {
    let mut history = history();
    history.remove(2);
    let mut body = MAGIC.to_vec();
    for r in &history {
        let mut one = Writer::default();
        one.push(r).unwrap();
        body.extend_from_slice(&one.finish().unwrap().0[MAGIC.len()..]);
    }
    assert_eq!(read(&body), Err(SegmentError::Gap { previous: 12, found: 14 }));
}

#[test]
fn a_lease_is_recorded_only_for_a_put_that_uses_it() {
    let put = Event::put(b"/k", b"v", 20, 20, 1, 7);
    let with = |leases: Vec<Lease>| Revision { revision: 20, received: at(0), events: vec![put.clone()], leases };
    Writer::default().push(&with(vec![Lease { id: 7, ttl: 60 }])).unwrap();
    for leases in [
        vec![Lease { id: 8, ttl: 60 }],
        vec![Lease { id: 7, ttl: 0 }],
        vec![Lease { id: 0, ttl: 60 }],
        vec![Lease { id: 7, ttl: 60 }, Lease { id: 7, ttl: 60 }],
    ] {
        let refused = Writer::default().push(&with(leases.clone())).unwrap_err();
        assert!(
            matches!(&refused, SegmentError::BadEvent { why, .. } if why.contains("lease")),
            "{leases:?}: {refused}"
        );
    }
}

#[test]
fn a_watch_responses_events_group_into_their_revisions() {
    let events: Vec<Event> = history().into_iter().flat_map(|r| r.events).collect();
    let grouped = group(events, at(7));
    let expected: Vec<Revision> =
        history().into_iter().map(|r| Revision { received: at(7), leases: vec![], ..r }).collect();
    assert_eq!(grouped, expected);
    assert!(group(vec![], at(0)).is_empty());
}

#[test]
fn times_are_kept_to_the_millisecond_as_the_body_records_them() {
    let fine = at(0) + chrono::Duration::nanoseconds(123_456);
    let revision = Revision { revision: 20, received: fine, events: vec![Event::delete(b"/k", 20)], leases: vec![] };
    let (body, summary) = written(&[revision]);
    assert_eq!(summary.first_received, at(0));
    assert_eq!(read(&body).unwrap().1, summary, "what the writer says it wrote is what reads back");
}

#[test]
fn a_writer_told_where_its_chain_goes_on_refuses_any_other_first_revision() {
    for (start, accepted) in [(11, true), (10, false), (12, false)] {
        let mut writer = Writer::starting_at(start);
        let pushed = writer.push(&history()[0]);
        assert_eq!(pushed.is_ok(), accepted, "{start}");
        if !accepted {
            assert_eq!(pushed, Err(SegmentError::Gap { previous: start - 1, found: 11 }));
        }
    }
    let mut huge = history()[0].clone();
    huge.revision = MAX_REVISION + 1;
    huge.events = vec![Event::delete(b"/k", MAX_REVISION + 1)];
    assert!(matches!(Writer::default().push(&huge), Err(SegmentError::BadEvent { .. })));
}
