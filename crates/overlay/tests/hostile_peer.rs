//! A hostile peer against real chat nodes (in-process, QUIC on loopback): frames of an unknown
//! version close its connection; a forged message is relayed by nobody's UI; a replayed one
//! (under a false id, or with a byte appended) is not shown twice; a flood of frames is cut
//! down and the honest nodes keep chatting. Issue 9: a valid envelope under another message's
//! id does not hide that message; frames for made-up topics do not block `/join`; a nickname
//! cannot be taken over; escape sequences are shown inert; a flooding neighbour cannot fill the
//! disk while an offline recipient still gets its direct message; shuffles cannot make a node
//! dial unboundedly many peers.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use overlay::chat::envelope::{self, Content};
use overlay::chat::{self, ChatConfig, ChatEvent, Command};
use overlay::driver::Peer;
use overlay::identity::Identity;
use overlay::proto::hyparview;
use overlay::proto::node::{TopicId, Wire, MAX_TOPICS};
use overlay::proto::plumtree::{self, MessageId};
use overlay::transport::{Conn, Endpoint};
use overlay::wire;
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;
use tokio::time::timeout;

const WAIT: Duration = Duration::from_secs(20);

struct Node {
    cmd: mpsc::Sender<Command>,
    events: mpsc::Receiver<ChatEvent>,
    addr: SocketAddr,
}

async fn start(dir: &Path, nick: &str, anchors: Vec<SocketAddr>) -> Node {
    let config = ChatConfig {
        data: dir.join(nick),
        listen: "127.0.0.1:0".parse().expect("addr"),
        advertise: None,
        anchors,
        nick: nick.to_string(),
        rooms: vec!["general".into()],
        node: Default::default(),
        share: Vec::new(),
        dht: None,
    };
    let (cmd, cmd_rx) = mpsc::channel(16);
    let (ev_tx, mut events) = mpsc::channel(4096);
    tokio::spawn(async move {
        chat::run(config, cmd_rx, ev_tx).await.expect("chat node runs");
    });
    let addr = loop {
        match timeout(WAIT, events.recv()).await.expect("ready in time") {
            Some(ChatEvent::Ready { addr, .. }) => break addr.parse().expect("addr"),
            Some(_) => {}
            None => panic!("node stopped"),
        }
    };
    Node { cmd, events, addr }
}

/// Waits for a room message with `text`; returns every event seen meanwhile.
async fn expect_message(node: &mut Node, text: &str) -> Vec<ChatEvent> {
    let mut seen = Vec::new();
    let found = timeout(WAIT, async {
        while let Some(ev) = node.events.recv().await {
            let hit = matches!(&ev, ChatEvent::Message { text: t, .. } if t == text);
            seen.push(ev);
            if hit {
                return;
            }
        }
    })
    .await;
    assert!(found.is_ok(), "no message {text:?}; saw {seen:?}");
    seen
}

/// Events that arrive within `d`.
async fn drain_for(node: &mut Node, d: Duration) -> Vec<ChatEvent> {
    let mut seen = Vec::new();
    let _ = timeout(d, async {
        while let Some(ev) = node.events.recv().await {
            seen.push(ev);
        }
    })
    .await;
    seen
}

fn frame(msg: &Wire<Peer>) -> Vec<u8> {
    wire::encode(msg).expect("small frame")
}

/// Reads frames from `conn` until a room gossip payload arrives.
async fn next_gossip_payload(conn: &mut Conn) -> Vec<u8> {
    timeout(WAIT, async {
        loop {
            let f = conn.recv().await.expect("connection alive").expect("not closed");
            if let Ok(Wire::Gossip { msg: plumtree::Message::Gossip { payload, .. }, .. }) =
                wire::decode::<Wire<Peer>>(&f)
            {
                if envelope::open(envelope::room_topic("general"), &payload).is_ok() {
                    return payload;
                }
            }
        }
    })
    .await
    .expect("gossip reaches the attacker")
}

/// Dials `anchor` as a node with key `seed`, joins, and waits until it is taken as a neighbor.
async fn join_as(seed: u8, anchor: SocketAddr) -> (Identity, Endpoint, Conn) {
    let id = Identity::from_seed([seed; 32]);
    let ep = Endpoint::bind(&id, "127.0.0.1:0".parse().expect("addr")).expect("bind");
    let mut conn = ep.connect(anchor, None).await.expect("dial anchor");
    conn.send(&frame(&Wire::Membership(hyparview::Message::Join))).await.expect("join");
    timeout(WAIT, async {
        loop {
            let f = conn.recv().await.expect("connection alive").expect("not closed");
            let accepted = Wire::Membership(hyparview::Message::NeighborReply { accepted: true });
            if wire::decode::<Wire<Peer>>(&f).ok() == Some(accepted) {
                return;
            }
        }
    })
    .await
    .expect("the anchor takes the node as a neighbor");
    (id, ep, conn)
}

/// Whether a frame carries (or announces) the broadcast `id`.
fn mentions(f: &[u8], id: &MessageId) -> bool {
    match wire::decode::<Wire<Peer>>(f) {
        Ok(Wire::Gossip { msg: plumtree::Message::Gossip { id: got, .. }, .. }) => got == *id,
        Ok(Wire::Gossip { msg: plumtree::Message::IHave(entries), .. }) => {
            entries.iter().any(|(got, _)| got == id)
        }
        _ => false,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_peer_cannot_forge_replay_or_flood() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut anchor = start(dir.path(), "anchor", vec![]).await;
    let bob = start(dir.path(), "bob", vec![anchor.addr]).await;
    // Bob's hello proves the two are connected before the attack starts.
    bob.cmd
        .send(Command::Say { room: "general".into(), text: "hello".into() })
        .await
        .expect("send");
    expect_message(&mut anchor, "hello").await;

    let ep = Endpoint::bind(&Identity::from_seed([6; 32]), "127.0.0.1:0".parse().expect("addr"))
        .expect("bind");

    // 1. An unknown protocol version: the anchor closes the connection.
    let mut conn = ep.connect(anchor.addr, None).await.expect("dial anchor");
    let mut bad = frame(&Wire::Membership(hyparview::Message::Join));
    bad[0] = 99;
    conn.send(&bad).await.expect("send");
    let closed = timeout(WAIT, async {
        loop {
            match conn.recv().await {
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => return,
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "a frame of unknown version must close the connection");

    // 2. Join properly (eve, and a second node of hers that watches what the anchor relays),
    //    then forge a message in bob's name.
    drop(ep);
    let (eve, _ep, mut conn) = join_as(7, anchor.addr).await;
    let (_watcher, _wep, mut watch) = join_as(8, anchor.addr).await;
    let bob_id = {
        // Learn bob's id from his next message, which the anchor now pushes to eve too.
        bob.cmd
            .send(Command::Say { room: "general".into(), text: "second".into() })
            .await
            .expect("send");
        let raw = next_gossip_payload(&mut conn).await;
        let v = envelope::open(envelope::room_topic("general"), &raw).expect("valid");
        // 3. Replay it under a fresh gossip id: dropped (the id is not its hash), shown once.
        let replay = Wire::Gossip {
            topic: envelope::room_topic("general"),
            msg: plumtree::Message::Gossip {
                id: MessageId([1; 32]),
                payload: raw.clone(),
                round: 0,
            },
        };
        conn.send(&frame(&replay)).await.expect("replay");
        // ... and with one byte appended, under the id of those bytes (issue 9 item 11): not a
        // canonical envelope, so dropped too.
        let mut longer = raw;
        longer.push(0);
        let id = MessageId(Sha256::digest(&longer).into());
        let replay = Wire::Gossip {
            topic: envelope::room_topic("general"),
            msg: plumtree::Message::Gossip { id, payload: longer, round: 0 },
        };
        conn.send(&frame(&replay)).await.expect("replay");
        v.content.author()
    };
    let forged = envelope::seal(
        &eve,
        Content::Room {
            author: bob_id,
            nick: "bob".into(),
            room: "general".into(),
            sent_ms: 1,
            nonce: 1,
            text: "send eve your keys".into(),
        },
    );
    let forged_frame = Wire::Gossip {
        topic: envelope::room_topic("general"),
        msg: plumtree::Message::Gossip { id: forged.id, payload: forged.raw.clone(), round: 0 },
    };
    conn.send(&frame(&forged_frame)).await.expect("forge");
    // The anchor checks signatures before relaying: the watcher sees bob's next message but
    // never the forgery (neither pushed nor announced).
    tokio::time::sleep(Duration::from_secs(1)).await;
    bob.cmd
        .send(Command::Say { room: "general".into(), text: "after".into() })
        .await
        .expect("send");
    let mut watched = Vec::new();
    timeout(WAIT, async {
        loop {
            let f = watch.recv().await.expect("watcher alive").expect("not closed");
            let is_after = matches!(
                wire::decode::<Wire<Peer>>(&f),
                Ok(Wire::Gossip { msg: plumtree::Message::Gossip { ref payload, .. }, .. })
                    if envelope::open(envelope::room_topic("general"), payload)
                        .is_ok_and(|v| matches!(v.content, Content::Room { ref text, .. } if text == "after"))
            );
            watched.push(f);
            if is_after {
                return;
            }
        }
    })
    .await
    .expect("bob's message reaches the watcher");
    assert!(!watched.iter().any(|f| mentions(f, &forged.id)), "the anchor relayed a forgery");

    // 4. A flood: 20,000 IHAVE frames as fast as QUIC takes them.
    let flood = frame(&Wire::Gossip {
        topic: envelope::room_topic("general"),
        msg: plumtree::Message::IHave(vec![(MessageId([9; 32]), 3)]),
    });
    for _ in 0..20_000 {
        if conn.send(&flood).await.is_err() {
            break;
        }
    }

    // The honest nodes keep chatting, and never show the forgery or the replay twice.
    bob.cmd
        .send(Command::Say { room: "general".into(), text: "still here".into() })
        .await
        .expect("send");
    let seen = expect_message(&mut anchor, "still here").await;
    let mut seen_all = seen;
    seen_all.extend(drain_for(&mut anchor, Duration::from_secs(1)).await);
    let texts: Vec<&str> = seen_all
        .iter()
        .filter_map(|e| match e {
            ChatEvent::Message { text, .. } => Some(text.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(texts.iter().filter(|t| **t == "second").count(), 1, "{texts:?}");
    assert!(!texts.contains(&"send eve your keys"), "forgery shown: {texts:?}");
}

/// Reads frames from `conn` until the room gossip whose text is `text` arrives; returns its id
/// and envelope.
async fn gossip_with_text(conn: &mut Conn, text: &str) -> (MessageId, Vec<u8>) {
    timeout(WAIT, async {
        loop {
            let f = conn.recv().await.expect("connection alive").expect("not closed");
            if let Ok(Wire::Gossip { msg: plumtree::Message::Gossip { id, payload, .. }, .. }) =
                wire::decode::<Wire<Peer>>(&f)
            {
                let v = envelope::open(envelope::room_topic("general"), &payload);
                if v.is_ok_and(
                    |v| matches!(v.content, Content::Room { text: ref t, .. } if t == text),
                ) {
                    return (id, payload);
                }
            }
        }
    })
    .await
    .expect("the gossip reaches the attacker")
}

/// Issue 9 item 10. Eve is the only link between bob and the subtree carol → dave. When bob's
/// message comes by, she first hands carol a different, validly signed envelope under its id,
/// then the real one. Without the id check carol takes the id as seen, relays the decoy under
/// it, and prunes the real message as a duplicate, so neither carol nor dave ever shows it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gossip_under_another_messages_id_does_not_hide_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let bob = start(dir.path(), "bob", vec![]).await;
    let mut carol = start(dir.path(), "carol", vec![]).await;
    let (eve, _bep, mut to_bob) = join_as(7, bob.addr).await;
    let (_, _cep, mut to_carol) = join_as(7, carol.addr).await;
    let mut dave = start(dir.path(), "dave", vec![carol.addr]).await;
    // Dave is carol's neighbor once he hears her catch-up traffic; prove it with a message.
    carol
        .cmd
        .send(Command::Say { room: "general".into(), text: "carol here".into() })
        .await
        .expect("send");
    expect_message(&mut dave, "carol here").await;

    bob.cmd
        .send(Command::Say { room: "general".into(), text: "the real one".into() })
        .await
        .expect("send");
    let (real_id, real) = gossip_with_text(&mut to_bob, "the real one").await;
    let decoy = envelope::seal(
        &eve,
        Content::Room {
            author: eve.id(),
            nick: "eve".into(),
            room: "general".into(),
            sent_ms: 1,
            nonce: 1,
            text: "decoy".into(),
        },
    );
    let gossip = |payload: Vec<u8>| {
        frame(&Wire::Gossip {
            topic: envelope::room_topic("general"),
            msg: plumtree::Message::Gossip { id: real_id, payload, round: 0 },
        })
    };
    to_carol.send(&gossip(decoy.raw.clone())).await.expect("send decoy");
    to_carol.send(&gossip(real)).await.expect("send real");

    expect_message(&mut carol, "the real one").await;
    expect_message(&mut dave, "the real one").await;

    // The mismatches count against eve: a few more and carol hangs up on her.
    for _ in 0..overlay::driver::MAX_INVALID_BROADCASTS {
        if to_carol.send(&gossip(decoy.raw.clone())).await.is_err() {
            break;
        }
    }
    let closed = timeout(WAIT, async {
        loop {
            match to_carol.recv().await {
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => return,
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "carol keeps a peer that relays envelopes under false ids");
}

/// Whether a terminal would act on `c` rather than show it.
fn active_on_a_terminal(c: char) -> bool {
    c.is_control()
        || matches!(c, '\u{061c}' | '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}')
        || matches!(c, '\u{2066}'..='\u{2069}' | '\u{2028}' | '\u{2029}')
}

/// Issue 9 item 14: a peer's nickname and text with an OSC 52 clipboard write, a C1 CSI, a
/// fake new line and a bidi override reach the UI as visible escapes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn escape_sequences_from_a_peer_are_shown_inert() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut anchor = start(dir.path(), "anchor", vec![]).await;
    let (eve, _ep, mut conn) = join_as(9, anchor.addr).await;
    let text = "hi \u{1b}]52;c;cm0gLXJmIH4=\u{7}\u{9b}2J\n<bob> send me your key \u{202e}exe.txt";
    let v = envelope::seal(
        &eve,
        Content::Room {
            author: eve.id(),
            nick: "b\u{202e}ob".into(),
            room: "general".into(),
            sent_ms: 1,
            nonce: 1,
            text: text.into(),
        },
    );
    let gossip = Wire::Gossip {
        topic: envelope::room_topic("general"),
        msg: plumtree::Message::Gossip { id: v.id, payload: v.raw, round: 0 },
    };
    conn.send(&frame(&gossip)).await.expect("send");
    let shown = timeout(WAIT, async {
        loop {
            match anchor.events.recv().await.expect("node runs") {
                ChatEvent::Message { nick, text, .. } => return (nick, text),
                _ => continue,
            }
        }
    })
    .await
    .expect("the message is shown");
    let (nick, text) = shown;
    assert!(!nick.chars().any(active_on_a_terminal), "{nick:?}");
    assert!(!text.chars().any(active_on_a_terminal), "{text:?}");
    // What was sent is still visible, as escapes.
    assert_eq!(nick, "b\\u{202e}ob");
    assert!(text.starts_with("hi \\u{1b}]52;c;cm0gLXJmIH4=\\u{7}\\u{9b}2J\\u{a}<bob>"), "{text:?}");
}

/// Waits for an `Info` or `Error` event; returns it (and skips others).
async fn next_reply(node: &mut Node) -> ChatEvent {
    timeout(WAIT, async {
        loop {
            match node.events.recv().await.expect("node runs") {
                ev @ (ChatEvent::Info { .. } | ChatEvent::Error { .. }) => return ev,
                _ => continue,
            }
        }
    })
    .await
    .expect("an answer to the command")
}

/// Issue 9 item 12: frames for made-up topics used to fill the topic table, after which
/// `/join` failed silently while saying "joined". Now they take no room; and when the node
/// really follows all it can, `/join` says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn made_up_topics_do_not_block_joining_and_a_failed_join_says_so() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut anchor = start(dir.path(), "anchor", vec![]).await;
    let bob = start(dir.path(), "bob", vec![anchor.addr]).await;
    let (_eve, _ep, mut conn) = join_as(10, anchor.addr).await;
    for i in 0..2 * MAX_TOPICS {
        let mut topic = [0xee; 32];
        topic[..8].copy_from_slice(&(i as u64).to_le_bytes());
        let ihave = Wire::Gossip {
            topic: TopicId(topic),
            msg: plumtree::Message::IHave(vec![(MessageId([1; 32]), 0)]),
        };
        conn.send(&frame(&ihave)).await.expect("send");
    }
    // The frames are read in order: once a later message of bob's is shown, they are handled.
    bob.cmd
        .send(Command::Say { room: "general".into(), text: "flooded".into() })
        .await
        .expect("send");
    expect_message(&mut anchor, "flooded").await;

    anchor.cmd.send(Command::Join("newroom".into())).await.expect("send");
    let reply = next_reply(&mut anchor).await;
    assert_eq!(reply, ChatEvent::Info { text: "joined #newroom".into() });
    bob.cmd.send(Command::Join("newroom".into())).await.expect("send");
    tokio::time::sleep(Duration::from_millis(500)).await;
    bob.cmd
        .send(Command::Say { room: "newroom".into(), text: "in the new room".into() })
        .await
        .expect("send");
    expect_message(&mut anchor, "in the new room").await;

    // Follow rooms until the table is full: the refusal is an error, not "joined".
    let mut refused = None;
    for i in 0..MAX_TOPICS {
        let room = format!("room{i}");
        anchor.cmd.send(Command::Join(room.clone())).await.expect("send");
        match next_reply(&mut anchor).await {
            ChatEvent::Info { text } => assert_eq!(text, format!("joined #{room}")),
            ChatEvent::Error { text } => {
                refused = Some((i, text));
                break;
            }
            _ => unreachable!("next_reply returns Info or Error"),
        }
    }
    let (i, text) = refused.expect("a node cannot follow unboundedly many rooms");
    // The directory, general and newroom were followed before.
    assert_eq!(i, MAX_TOPICS - 3, "{text}");
    assert!(text.contains("cannot join #room"), "{text}");
}

/// Issue 9 item 13: eve announces bob's nickname with the latest possible timestamp. `/msg bob`
/// used to go to her; now alice is told two keys claim "bob" and asked which, bob's id still
/// reaches bob, and eve's messages show her id next to the name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nickname_cannot_be_taken_over() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut alice = start(dir.path(), "alice", vec![]).await;
    let mut bob = start(dir.path(), "bob", vec![alice.addr]).await;
    bob.cmd
        .send(Command::Say { room: "general".into(), text: "bob here".into() })
        .await
        .expect("send");
    let seen = expect_message(&mut alice, "bob here").await;
    let bob_id = seen
        .iter()
        .find_map(|e| match e {
            ChatEvent::Message { author, text, nick, .. } if text == "bob here" => {
                assert_eq!(nick, "bob");
                Some(author.clone())
            }
            _ => None,
        })
        .expect("bob's message");

    let (eve, _ep, mut conn) = join_as(11, alice.addr).await;
    for v in [
        envelope::seal(
            &eve,
            Content::Presence { author: eve.id(), nick: "bob".into(), sent_ms: i64::MAX as u64 },
        ),
        envelope::seal(
            &eve,
            Content::Room {
                author: eve.id(),
                nick: "bob".into(),
                room: "general".into(),
                sent_ms: i64::MAX as u64,
                nonce: 1,
                text: "it is me, bob".into(),
            },
        ),
    ] {
        let topic = v.content.topic();
        let gossip = Wire::Gossip {
            topic,
            msg: plumtree::Message::Gossip { id: v.id, payload: v.raw, round: 0 },
        };
        conn.send(&frame(&gossip)).await.expect("send");
    }
    let seen = expect_message(&mut alice, "it is me, bob").await;
    let eve_hex = eve.id().to_string();
    assert!(
        seen.iter().any(|e| matches!(e, ChatEvent::Info { text } if text.contains(&eve_hex) && text.contains(&bob_id))),
        "alice is told a second key claims bob: {seen:?}"
    );
    let shown = seen.iter().find_map(|e| match e {
        ChatEvent::Message { nick, text, .. } if text == "it is me, bob" => Some(nick.clone()),
        _ => None,
    });
    assert_eq!(shown, Some(format!("bob?{}", &eve_hex[..16])));

    alice
        .cmd
        .send(Command::Msg { to: "bob".into(), text: "for bob only".into() })
        .await
        .expect("send");
    match next_reply(&mut alice).await {
        ChatEvent::Error { text } => {
            assert!(text.contains(&bob_id) && text.contains(&eve_hex), "{text}");
        }
        other => panic!("/msg bob went somewhere: {other:?}"),
    }
    alice
        .cmd
        .send(Command::Msg { to: bob_id[..16].to_string(), text: "for bob only".into() })
        .await
        .expect("send");
    timeout(WAIT, async {
        loop {
            match bob.events.recv().await.expect("bob runs") {
                ChatEvent::Dm { text, nick, .. } if text == "for bob only" => {
                    assert_eq!(nick, "alice");
                    return;
                }
                _ => continue,
            }
        }
    })
    .await
    .expect("bob gets the message sent to his id");
}

/// Counts rows of a node's history database (read while the node runs; WAL allows it).
fn stored(dir: &Path, nick: &str, filter: &str, args: &[&dyn rusqlite::ToSql]) -> usize {
    let db = rusqlite::Connection::open(dir.join(nick).join("chat.sqlite")).expect("open db");
    let sql = format!("SELECT count(*) FROM messages WHERE {filter}");
    db.query_row(&sql, args, |r| r.get::<_, i64>(0)).expect("count") as usize
}

/// Issue 9 item 15: one neighbour used to be able to add every envelope it liked to a node's
/// disk, for good. Eve sends 1,100 messages to a followed room, 100 sealed direct messages for
/// one recipient and messages to a room the node does not follow: the node keeps 1,000 of hers
/// for the room (the per-author quota), 64 for the recipient, none for the other room.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flooding_neighbour_cannot_fill_the_disk() {
    use overlay::chat::envelope::{seal_direct, DirectPlain};
    let dir = tempfile::tempdir().expect("tempdir");
    let mut anchor = start(dir.path(), "anchor", vec![]).await;
    let (eve, _ep, mut conn) = join_as(12, anchor.addr).await;
    let room_msg = |room: &str, i: u64| {
        envelope::seal(
            &eve,
            Content::Room {
                author: eve.id(),
                nick: "eve".into(),
                room: room.into(),
                sent_ms: i,
                nonce: i,
                text: format!("flood {i}"),
            },
        )
    };
    let victim = Identity::from_seed([13; 32]).id();
    let plain = DirectPlain { nick: "eve".into(), text: "x".repeat(1000) };
    let mut envelopes: Vec<_> = (0..1100).map(|i| room_msg("general", i)).collect();
    envelopes.extend((0..10).map(|i| room_msg("secret", i)));
    envelopes.extend(
        (0..100u8).map(|i| seal_direct(&eve, victim, &plain, 1, [i; 32]).expect("valid key")),
    );
    envelopes.push(room_msg("general", 5000));
    for v in envelopes {
        let topic = v.content.topic();
        let msg = plumtree::Message::Gossip { id: v.id, payload: v.raw, round: 0 };
        conn.send(&frame(&Wire::Gossip { topic, msg })).await.expect("send");
    }
    // Frames from one connection are handled in order: the last one shown means all were.
    expect_message(&mut anchor, "flood 5000").await;
    let eve_id: &dyn rusqlite::ToSql = &eve.id().0[..].to_vec();
    let general: &dyn rusqlite::ToSql = &envelope::room_topic("general").0.to_vec();
    let secret: &dyn rusqlite::ToSql = &envelope::room_topic("secret").0.to_vec();
    let to_victim: &dyn rusqlite::ToSql = &victim.0.to_vec();
    assert_eq!(
        stored(dir.path(), "anchor", "author = ?1 AND topic = ?2", &[eve_id, general]),
        1000
    );
    assert_eq!(stored(dir.path(), "anchor", "topic = ?1", &[secret]), 0);
    assert_eq!(stored(dir.path(), "anchor", "recipient = ?1", &[to_victim]), 64);
}

/// Issue 9 item 15, the other side: a direct message to someone offline is kept by the nodes
/// that relay it, and the recipient gets it when he comes back, with its author gone too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_offline_recipient_catches_up_on_a_direct_message() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut anchor = start(dir.path(), "anchor", vec![]).await;
    let mut alice = start(dir.path(), "alice", vec![anchor.addr]).await;
    let bob = start(dir.path(), "bob", vec![anchor.addr]).await;
    bob.cmd
        .send(Command::Say { room: "general".into(), text: "bob here".into() })
        .await
        .expect("send");
    expect_message(&mut alice, "bob here").await;
    expect_message(&mut anchor, "bob here").await;
    drop(bob);
    tokio::time::sleep(Duration::from_secs(1)).await;
    alice
        .cmd
        .send(Command::Msg { to: "bob".into(), text: "while you were out".into() })
        .await
        .expect("send");
    let anchor_dir = dir.path();
    timeout(WAIT, async {
        while stored(anchor_dir, "anchor", "kind = 2", &[]) == 0 {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
    .expect("the anchor keeps the sealed message");
    drop(alice);
    let mut bob = start(dir.path(), "bob", vec![anchor.addr]).await;
    timeout(WAIT, async {
        loop {
            match bob.events.recv().await.expect("bob runs") {
                ChatEvent::Dm { text, via, .. } if text == "while you were out" => {
                    assert_eq!(via, overlay::chat::Via::Sync);
                    return;
                }
                _ => continue,
            }
        }
    })
    .await
    .expect("bob catches up on the direct message");
}

/// A SHUFFLE names the node that wants the reply, and the receiver dials it. Eve sends twice
/// `MAX_PEERS` shuffles naming made-up nodes at one UDP socket of hers: the anchor starts at
/// most `MAX_PEERS` connections (counted as distinct QUIC destination connection ids), instead
/// of one per shuffle.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shuffles_cannot_make_a_node_dial_unboundedly_many_peers() {
    use overlay::driver::MAX_PEERS;
    let dir = tempfile::tempdir().expect("tempdir");
    let anchor = start(dir.path(), "anchor", vec![]).await;
    let (_eve, _ep, mut conn) = join_as(14, anchor.addr).await;
    let sink = tokio::net::UdpSocket::bind("127.0.0.1:0").await.expect("bind");
    let addr = sink.local_addr().expect("addr");
    for i in 0..2 * MAX_PEERS as u32 {
        let mut seed = [15; 32];
        seed[..4].copy_from_slice(&i.to_le_bytes());
        let origin = Peer { id: Identity::from_seed(seed).id(), addr };
        let shuffle = hyparview::Message::Shuffle { origin, ttl: 0, nodes: vec![origin] };
        conn.send(&frame(&Wire::Membership(shuffle))).await.expect("send");
    }
    let mut dcids = std::collections::BTreeSet::new();
    let mut buf = vec![0u8; 2048];
    let _ = timeout(Duration::from_secs(4), async {
        loop {
            let (n, _) = sink.recv_from(&mut buf).await.expect("recv");
            // A QUIC long header: flags, version (4), DCID length, DCID.
            if n > 6 && buf[0] & 0x80 != 0 {
                let len = buf[5] as usize;
                if n >= 6 + len {
                    dcids.insert(buf[6..6 + len].to_vec());
                }
            }
        }
    })
    .await;
    assert!(!dcids.is_empty(), "the anchor answers shuffles by dialing");
    assert!(dcids.len() <= MAX_PEERS, "{} connections started", dcids.len());
}
