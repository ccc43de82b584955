//! The chat terminal UI (crossterm): scrollback above, a status line, an input line below.
//!
//! Keys: Enter sends the line (or runs a /command), PageUp/PageDown scroll, Ctrl-C or `/quit`
//! leaves. Terminal input is read on a blocking thread and handed over a channel, so the async
//! loop only redraws and talks to the chat service.

use std::io::Write;

use anyhow::{Context, Result};
use crossterm::event::{Event, KeyCode, KeyEvent, KeyEventKind, KeyModifiers};
use crossterm::{cursor, execute, queue, style, terminal};
use overlay::chat::inert::inert;
use overlay::chat::{ChatEvent, Command, Via};
use tokio::sync::mpsc;

use crate::chat_line::{parse_line, Line, Sink};

/// Most lines kept in the scrollback.
const SCROLLBACK: usize = 5000;

/// Columns and rows of the terminal; 80×24 when it does not say (some ptys report 0×0).
fn screen_size() -> (usize, usize) {
    match terminal::size() {
        Ok((w, h)) if w >= 10 && h >= 4 => (w as usize, h as usize),
        _ => (80, 24),
    }
}

/// Restores the terminal when dropped, even on an error path.
struct Raw;

impl Raw {
    fn enter() -> Result<Self> {
        terminal::enable_raw_mode()
            .context("this terminal does not support raw mode; use --script")?;
        execute!(std::io::stdout(), terminal::EnterAlternateScreen)?;
        Ok(Raw)
    }
}

impl Drop for Raw {
    fn drop(&mut self) {
        let _ = execute!(std::io::stdout(), terminal::LeaveAlternateScreen);
        let _ = terminal::disable_raw_mode();
    }
}

struct Screen {
    lines: Vec<String>,
    scroll: usize,
    input: String,
    room: String,
    /// A `/join` sent but not yet confirmed: the status line moves to the room only when the
    /// service says "joined", so a refused join does not look like one.
    joining: Option<String>,
    nick: String,
    neighbors: i64,
    /// Files found by `/search`, numbered from 1 for `/get N`: (name, magnet).
    found: Vec<(String, String)>,
    /// Where downloads started with `/get` report (drained into the scrollback).
    notes: mpsc::Sender<String>,
}

/// Most search results kept for `/get N`.
const MAX_FOUND: usize = 1000;

impl Screen {
    /// Adds a line to the scrollback. The service already makes peers' text inert; doing it
    /// again here (it changes nothing in inert text) keeps any string that reaches the screen
    /// from driving the terminal.
    fn push(&mut self, line: String) {
        self.lines.push(inert(&line));
        if self.lines.len() > SCROLLBACK {
            self.lines.drain(..self.lines.len() - SCROLLBACK);
        }
    }

    fn on_event(&mut self, ev: ChatEvent) {
        match ev {
            ChatEvent::Ready { id, addr, nick } => {
                self.nick = nick;
                self.push(format!("* you are {} ({}) on {addr}", self.nick, &id[..8]));
                self.push(
                    "* /join ROOM  /msg NICK text  /peers  /nick NAME  /history  /search WORDS  \
                     /get N  /quit"
                        .into(),
                );
            }
            ChatEvent::Message { room, nick, author, text, via, .. } => {
                let tag = if via == Via::Sync { " (caught up)" } else { "" };
                self.push(format!("#{room} <{nick}:{}> {text}{tag}", &author[..6]));
            }
            ChatEvent::Dm { nick, author, text, .. } => {
                self.push(format!("[dm] <{nick}:{}> {text}", &author[..6]));
            }
            ChatEvent::Sent { to, text, .. } => {
                let to = if to.starts_with('@') { format!("[dm {to}]") } else { format!("#{to}") };
                self.push(format!("{to} <{}> {text}", self.nick));
            }
            ChatEvent::Peers { peers } => {
                self.push(format!("* {} neighbors", peers.len()));
                for p in peers {
                    self.push(format!("*   {p}"));
                }
            }
            ChatEvent::Neighbor { up, .. } => self.neighbors += if up { 1 } else { -1 },
            ChatEvent::Info { text } => {
                if let Some(room) = self.joining.take() {
                    if text == format!("joined #{room}") {
                        self.room = room;
                    } else {
                        self.joining = Some(room);
                    }
                }
                self.push(format!("* {text}"));
            }
            ChatEvent::Found { name, size, info_hash, peers, hops, .. } => {
                let Ok(hash) = <[u8; 20]>::try_from(hex::decode(&info_hash).unwrap_or_default())
                else {
                    return;
                };
                let magnet = crate::share::magnet(&name, hash, &peers);
                if let Some(i) = self.found.iter().position(|(_, m)| *m == magnet) {
                    self.push(format!("* [{}] {name}: another source", i + 1));
                } else if self.found.len() < MAX_FOUND {
                    self.found.push((name.clone(), magnet));
                    let n = self.found.len();
                    self.push(format!("* [{n}] {name} ({size} bytes, {hops} hops): /get {n}"));
                }
            }
            ChatEvent::SearchDone { results, .. } => {
                self.push(format!("* search done: {results} results"));
            }
            ChatEvent::Error { text } => {
                if self.joining.as_ref().is_some_and(|r| text.contains(r.as_str())) {
                    self.joining = None;
                }
                self.push(format!("! {text}"));
            }
        }
    }

    /// Runs the input line; returns false when the UI should quit.
    async fn enter(&mut self, sink: &Sink) -> Result<bool> {
        if self.input.trim().is_empty() {
            self.input.clear();
            return Ok(true);
        }
        let line = std::mem::take(&mut self.input);
        let mut room = self.room.clone();
        self.scroll = 0;
        if let Some(n) = line.trim().strip_prefix("/get") {
            self.get(n.trim());
            return Ok(true);
        }
        match parse_line(&line, &mut room) {
            Ok(Some(line)) => {
                match &line {
                    Line::Chat(Command::Nick(n)) => self.nick = n.clone(),
                    Line::Chat(Command::Join(r)) => self.joining = Some(r.clone()),
                    _ => self.room = room,
                }
                sink.run(line).await.or_else(|e| {
                    self.push(format!("! {e}"));
                    Ok(true)
                })
            }
            Ok(None) => Ok(false),
            Err(e) => {
                self.push(format!("! {e}"));
                Ok(true)
            }
        }
    }

    /// `/get N`: downloads the N-th file found into the current directory, in the background.
    fn get(&mut self, n: &str) {
        let picked = n.parse::<usize>().ok().and_then(|n| self.found.get(n.wrapping_sub(1)));
        let Some((name, magnet)) = picked.cloned() else {
            let shown = self.found.len();
            self.push(format!("! usage: /get N, with N from 1 to {shown} (/search WORDS first)"));
            return;
        };
        self.push(format!("* fetching {name}..."));
        let notes = self.notes.clone();
        tokio::spawn(async move {
            let note = |text: String| {
                let _ = notes.try_send(text);
            };
            if let Err(e) = crate::share::download(&magnet, std::path::Path::new("."), note).await {
                let _ = notes.try_send(format!("{name}: {e:#}"));
            }
        });
    }

    fn draw(&self) -> Result<()> {
        let (w, h) = screen_size();
        let body = h.saturating_sub(2);
        let end = self.lines.len().saturating_sub(self.scroll);
        let start = end.saturating_sub(body);
        let mut out = std::io::stdout();
        queue!(out, terminal::Clear(terminal::ClearType::All))?;
        for (row, line) in self.lines[start..end].iter().enumerate() {
            let shown: String = line.chars().take(w).collect();
            queue!(out, cursor::MoveTo(0, row as u16), style::Print(shown))?;
        }
        let status = format!(
            "-- #{} as {} | {} neighbors{} --",
            self.room,
            self.nick,
            self.neighbors.max(0),
            if self.scroll > 0 { " | scrolled (PageDown)" } else { "" }
        );
        let status: String = status.chars().take(w).collect();
        queue!(
            out,
            cursor::MoveTo(0, body as u16),
            style::PrintStyledContent(style::Stylize::reverse(status)),
        )?;
        let prompt = format!("> {}", self.input);
        let tail: String = prompt
            .chars()
            .rev()
            .take(w.saturating_sub(1))
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect();
        queue!(out, cursor::MoveTo(0, (h - 1) as u16), style::Print(&tail))?;
        out.flush()?;
        Ok(())
    }
}

/// Runs the UI until `/quit`, Ctrl-C, or the service stops.
pub async fn run(
    room: String,
    nick: String,
    sink: Sink,
    mut dht_rx: mpsc::Receiver<ChatEvent>,
    mut ev_rx: mpsc::Receiver<ChatEvent>,
) -> Result<()> {
    let _raw = Raw::enter()?;
    let (key_tx, mut key_rx) = mpsc::channel::<Event>(64);
    std::thread::spawn(move || {
        while let Ok(ev) = crossterm::event::read() {
            if key_tx.blocking_send(ev).is_err() {
                return;
            }
        }
    });
    let (notes, mut notes_rx) = mpsc::channel(64);
    let mut screen = Screen {
        lines: Vec::new(),
        scroll: 0,
        input: String::new(),
        room,
        joining: None,
        nick,
        neighbors: 0,
        found: Vec::new(),
        notes,
    };
    screen.draw()?;
    loop {
        tokio::select! {
            ev = ev_rx.recv() => match ev {
                Some(ev) => screen.on_event(ev),
                None => return Ok(()),
            },
            Some(note) = notes_rx.recv() => screen.push(format!("* {note}")),
            Some(ev) = dht_rx.recv() => screen.on_event(ev),
            key = key_rx.recv() => match key {
                Some(Event::Key(KeyEvent { code, modifiers, kind: KeyEventKind::Press, .. })) => {
                    let ctrl = modifiers.contains(KeyModifiers::CONTROL);
                    // Ctrl-J (line feed) acts as Enter; other control chords are ignored.
                    let enter = code == KeyCode::Enter || (ctrl && code == KeyCode::Char('j'));
                    if ctrl && code == KeyCode::Char('c') {
                        return Ok(());
                    }
                    if enter && !screen.enter(&sink).await? {
                        return Ok(());
                    }
                    match code {
                        KeyCode::Char(c) if !ctrl => screen.input.push(c),
                        KeyCode::Backspace => {
                            screen.input.pop();
                        }
                        KeyCode::PageUp => {
                            let page = screen_size().1.saturating_sub(3);
                            screen.scroll = (screen.scroll + page).min(screen.lines.len());
                        }
                        KeyCode::PageDown => {
                            let page = screen_size().1.saturating_sub(3);
                            screen.scroll = screen.scroll.saturating_sub(page);
                        }
                        _ => {}
                    }
                }
                Some(_) => {}
                None => return Ok(()),
            },
        }
        screen.draw()?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn screen() -> Screen {
        Screen {
            lines: Vec::new(),
            scroll: 0,
            input: String::new(),
            room: "general".into(),
            joining: None,
            nick: "ann".into(),
            found: Vec::new(),
            notes: mpsc::channel(1).0,
            neighbors: 0,
        }
    }

    /// A sink to a chat service (the receiver), on a node with no DHT.
    fn sink_without_dht() -> (Sink, mpsc::Receiver<Command>) {
        let (tx, rx) = mpsc::channel(4);
        (Sink::new(tx, None).0, rx)
    }

    /// Issue 9 item 12: a refused `/join` used to look like a successful one.
    #[tokio::test]
    async fn the_status_line_moves_to_a_room_only_once_it_is_joined() {
        let (sink, mut rx) = sink_without_dht();
        let mut s = screen();
        s.input = "/join full".into();
        assert!(s.enter(&sink).await.expect("sent"));
        assert_eq!(rx.recv().await, Some(Command::Join("full".into())));
        assert_eq!(s.room, "general");
        s.on_event(ChatEvent::Error {
            text: "cannot join #full: this node already follows 63 rooms, the most it can".into(),
        });
        assert_eq!(s.room, "general");
        assert_eq!(
            s.lines.last().map(String::as_str),
            Some("! cannot join #full: this node already follows 63 rooms, the most it can")
        );
        s.input = "/join rust".into();
        assert!(s.enter(&sink).await.expect("sent"));
        s.on_event(ChatEvent::Info { text: "joined #rust".into() });
        assert_eq!(s.room, "rust");
    }

    /// `/search --dht` on a node without a DHT says so, and the UI goes on.
    #[tokio::test]
    async fn a_dht_search_without_a_dht_says_so() {
        let (sink, mut rx) = sink_without_dht();
        let mut s = screen();
        s.input = "/search --dht river".into();
        assert!(s.enter(&sink).await.expect("the UI goes on"));
        assert!(rx.try_recv().is_err(), "nothing for the chat service");
        let last = s.lines.last().map(String::as_str).unwrap_or_default();
        assert!(last.starts_with("! this node runs no DHT"), "{last:?}");
    }

    /// Issue 9 item 14: nothing printed to the scrollback drives the terminal.
    #[test]
    fn scrollback_lines_cannot_drive_the_terminal() {
        let mut s = screen();
        s.on_event(ChatEvent::Error { text: "\u{1b}]52;c;eA==\u{7} \u{9b}2J \u{202e}x".into() });
        let last = s.lines.last().expect("a line");
        assert!(!last.chars().any(|c| c.is_control() || c == '\u{202e}'), "{last:?}");
    }
}
