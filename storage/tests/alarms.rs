//! The alarm store in the state machine: `Command::Alarm` raises and clears alarms on every
//! member alike, NOSPACE caps the writes that add data (puts, txns with puts, lease grants)
//! while deletes and compaction go on, and the alarms survive a reopen.

mod support;

use std::io::Cursor;

use crawler_storage::*;
use openraft::storage::RaftStateMachine;
use openraft::{BasicNode, CommittedLeaderId, Entry, EntryPayload, LogId};

openraft::declare_raft_types!(
    /// Test type config: the store's commands with the default node type.
    pub TC:
        D = Command,
        R = ApplyResponse,
        NodeId = u64,
        Node = BasicNode,
);

async fn apply(sm: &mut StateMachine, index: &mut u64, cmd: Command) -> ApplyResponse {
    *index += 1;
    let e = Entry::<TC> {
        log_id: LogId::new(CommittedLeaderId::new(1, 1), *index),
        payload: EntryPayload::Normal(cmd),
    };
    RaftStateMachine::<TC>::apply(sm, vec![e])
        .await
        .unwrap()
        .remove(0)
}

fn put(k: &str) -> Command {
    Command::Put(PutRequest {
        key: k.into(),
        value: b"v".to_vec(),
        ..Default::default()
    })
}

fn alarm(activate: bool, member: u64) -> Command {
    Command::Alarm {
        activate,
        member,
        alarm: AlarmType::NoSpace,
    }
}

#[tokio::test]
async fn nospace_caps_writes_and_survives_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let mut i = 0;
    {
        let db = support::open_db_when_free(dir.path());
        let mut sm = StateMachine::open(&db).unwrap();
        assert!(apply(&mut sm, &mut i, put("a")).await.result.is_ok());
        apply(&mut sm, &mut i, alarm(true, 7)).await.result.unwrap();
        let r = sm.reader();
        assert_eq!(
            r.alarms(),
            vec![AlarmMember {
                member: 7,
                alarm: AlarmType::NoSpace
            }]
        );
        assert_eq!(
            apply(&mut sm, &mut i, put("b")).await.result,
            Err(ApplyError::NoSpace)
        );
        let grant = Command::LeaseGrant { id: 5, ttl: 60 };
        assert_eq!(
            apply(&mut sm, &mut i, grant).await.result,
            Err(ApplyError::NoSpace)
        );
        let txn_put = Command::Txn(TxnRequest {
            success: vec![RequestOp::Put(PutRequest {
                key: b"c".to_vec(),
                ..Default::default()
            })],
            ..Default::default()
        });
        assert_eq!(
            apply(&mut sm, &mut i, txn_put).await.result,
            Err(ApplyError::NoSpace)
        );
        let del = Command::DeleteRange(DeleteRangeRequest {
            key: b"a".to_vec(),
            ..Default::default()
        });
        assert!(apply(&mut sm, &mut i, del).await.result.is_ok());
        let rev = r.current_revision();
        let compact = Command::Compact { revision: rev };
        assert!(apply(&mut sm, &mut i, compact).await.result.is_ok());
        assert_eq!(r.key_count(), 0);
    }
    // Reopened: the alarm is still there and still caps puts.
    let db = support::open_db_when_free(dir.path());
    let mut sm = StateMachine::open(&db).unwrap();
    assert_eq!(sm.reader().alarms().len(), 1);
    assert_eq!(
        apply(&mut sm, &mut i, put("b")).await.result,
        Err(ApplyError::NoSpace)
    );
    // Clearing another member's alarm changes nothing; member 0 clears every member's.
    apply(&mut sm, &mut i, alarm(false, 8))
        .await
        .result
        .unwrap();
    assert_eq!(sm.reader().alarms().len(), 1);
    apply(&mut sm, &mut i, alarm(false, 0))
        .await
        .result
        .unwrap();
    assert!(sm.reader().alarms().is_empty());
    assert!(apply(&mut sm, &mut i, put("b")).await.result.is_ok());
}
