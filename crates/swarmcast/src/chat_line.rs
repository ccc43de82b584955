//! The line a person types in the chat UI or a script feeds `swarmcast chat --script`, as a
//! chat command: plain text is said in the current room, `/join`, `/msg`, `/peers`, `/nick`,
//! `/history`, `/search` and `/quit` are commands. Used by `chat_cmd.rs` (`--script`) and `tui.rs`.

use overlay::chat::Command;
use overlay::proto::search::{Mode, MAX_TTL};

/// One line typed by a person or a script, as a command; `Ok(None)` for `/quit`.
pub fn parse_line(line: &str, room: &mut String) -> Result<Option<Command>, String> {
    let line = line.trim_end_matches(['\r', '\n']);
    let Some(rest) = line.strip_prefix('/') else {
        return Ok(Some(Command::Say { room: room.clone(), text: line.to_string() }));
    };
    let (cmd, arg) = rest.split_once(' ').unwrap_or((rest, ""));
    let arg = arg.trim();
    match cmd {
        "join" if !arg.is_empty() => {
            let name = arg.trim_start_matches('#').to_string();
            *room = name.clone();
            Ok(Some(Command::Join(name)))
        }
        "msg" => match arg.split_once(' ') {
            Some((to, text)) if !text.trim().is_empty() => {
                Ok(Some(Command::Msg { to: to.to_string(), text: text.trim().to_string() }))
            }
            _ => Err("usage: /msg NICK text".into()),
        },
        "peers" => Ok(Some(Command::Peers)),
        "nick" if !arg.is_empty() => Ok(Some(Command::Nick(arg.to_string()))),
        "history" => {
            let n = if arg.is_empty() { 50 } else { arg.parse().map_err(|_| "usage: /history [N]")? };
            Ok(Some(Command::History { room: room.clone(), n }))
        }
        "search" => {
            // An optional first word picks the mode; expanding rings by default.
            let (mode, words) = match arg.split_once(' ') {
                Some(("--flood", w)) => (Mode::Flood(MAX_TTL), w),
                Some(("--ring", w)) => (Mode::Ring, w),
                Some(("--walk", w)) => (Mode::Walk, w),
                _ => (Mode::Ring, arg),
            };
            if words.trim().is_empty() || words.starts_with("--") {
                return Err("usage: /search [--flood|--ring|--walk] WORDS".into());
            }
            Ok(Some(Command::Search { text: words.trim().to_string(), mode }))
        }
        "quit" | "exit" => Ok(None),
        _ => Err(format!(
            "unknown command /{cmd}; try /join ROOM, /msg NICK text, /peers, /nick NAME, /history, /search WORDS, /quit"
        )),
    }
}
