//! The line a person types in the chat UI or a script feeds `swarmcast chat --script`, as a
//! chat command: plain text is said in the current room, `/join`, `/msg`, `/peers`, `/nick`,
//! `/history`, `/search` and `/quit` are commands. Used by `chat_cmd.rs` (`--script`) and `tui.rs`,
//! which hand what it gives to a [`Sink`].

use std::sync::Arc;

use overlay::chat::{ChatEvent, Command};
use overlay::proto::search::{Mode, MAX_TTL};
use tokio::sync::mpsc;

/// What a typed line asks for.
#[derive(Debug, PartialEq, Eq)]
pub enum Line {
    /// A command for the chat service.
    Chat(Command),
    /// `/search --dht WORDS`: a search of the DHT's keyword index, by the node's DHT node.
    DhtSearch(String),
}

/// Where a front end's lines go: the chat service, and the node's DHT node for DHT searches,
/// whose events come back on the receiver [`Sink::new`] gives.
pub struct Sink {
    commands: mpsc::Sender<Command>,
    dht: Option<Arc<dht::Dht>>,
    events: mpsc::Sender<ChatEvent>,
}

impl Sink {
    pub fn new(
        commands: mpsc::Sender<Command>,
        dht: Option<Arc<dht::Dht>>,
    ) -> (Sink, mpsc::Receiver<ChatEvent>) {
        let (events, rx) = mpsc::channel(256);
        (Sink { commands, dht, events }, rx)
    }

    /// Carries out `line`: `Ok(false)` once the chat service stopped, `Err` for the person.
    pub async fn run(&self, line: Line) -> Result<bool, String> {
        match line {
            Line::Chat(cmd) => Ok(self.commands.send(cmd).await.is_ok()),
            Line::DhtSearch(text) => match &self.dht {
                Some(node) => {
                    crate::dht_index::spawn_search(node.clone(), text, self.events.clone());
                    Ok(true)
                }
                None => {
                    Err("this node runs no DHT (--no-dht); /search WORDS asks the overlay".into())
                }
            },
        }
    }
}

/// One line typed by a person or a script, as what it asks for; `Ok(None)` for `/quit`.
pub fn parse_line(line: &str, room: &mut String) -> Result<Option<Line>, String> {
    let line = line.trim_end_matches(['\r', '\n']);
    let Some(rest) = line.strip_prefix('/') else {
        return Ok(Some(Line::Chat(Command::Say { room: room.clone(), text: line.to_string() })));
    };
    let (cmd, arg) = rest.split_once(' ').unwrap_or((rest, ""));
    let arg = arg.trim();
    let command = match cmd {
        "join" if !arg.is_empty() => {
            let name = arg.trim_start_matches('#').to_string();
            *room = name.clone();
            Command::Join(name)
        }
        "msg" => match arg.split_once(' ') {
            Some((to, text)) if !text.trim().is_empty() => {
                Command::Msg { to: to.to_string(), text: text.trim().to_string() }
            }
            _ => return Err("usage: /msg NICK text".into()),
        },
        "peers" => Command::Peers,
        "nick" if !arg.is_empty() => Command::Nick(arg.to_string()),
        "history" => {
            let n = if arg.is_empty() { 50 } else { arg.parse().map_err(|_| "usage: /history [N]")? };
            Command::History { room: room.clone(), n }
        }
        "search" => {
            // An optional first word picks the mode; expanding rings by default.
            let (mode, words) = match arg.split_once(' ') {
                Some(("--flood", w)) => (Some(Mode::Flood(MAX_TTL)), w),
                Some(("--ring", w)) => (Some(Mode::Ring), w),
                Some(("--walk", w)) => (Some(Mode::Walk), w),
                Some(("--dht", w)) => (None, w),
                _ => (Some(Mode::Ring), arg),
            };
            let text = words.trim().to_string();
            if text.is_empty() || text.starts_with("--") {
                return Err("usage: /search [--flood|--ring|--walk|--dht] WORDS".into());
            }
            match mode {
                Some(mode) => Command::Search { text, mode },
                None => return Ok(Some(Line::DhtSearch(text))),
            }
        }
        "quit" | "exit" => return Ok(None),
        _ => {
            return Err(format!(
                "unknown command /{cmd}; try /join ROOM, /msg NICK text, /peers, /nick NAME, /history, /search WORDS, /quit"
            ))
        }
    };
    Ok(Some(Line::Chat(command)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn search_lines_pick_their_mode() {
        let mut room = "lobby".to_string();
        let search =
            |text: &str, mode| Some(Line::Chat(Command::Search { text: text.into(), mode }));
        assert_eq!(parse_line("/search river", &mut room), Ok(search("river", Mode::Ring)));
        assert_eq!(parse_line("/search --walk a b", &mut room), Ok(search("a b", Mode::Walk)));
        assert_eq!(
            parse_line("/search --flood river", &mut room),
            Ok(search("river", Mode::Flood(MAX_TTL)))
        );
        assert_eq!(
            parse_line("/search --dht desert caravan", &mut room),
            Ok(Some(Line::DhtSearch("desert caravan".into())))
        );
        assert!(parse_line("/search --dht", &mut room).is_err());
        assert!(parse_line("/search --dht --walk", &mut room).is_err());
        assert_eq!(parse_line("/quit", &mut room), Ok(None));
        assert_eq!(
            parse_line("hello", &mut room),
            Ok(Some(Line::Chat(Command::Say { room: "lobby".into(), text: "hello".into() })))
        );
    }
}
