//! The DASH manifest (MPD): a model, a capped parser, segment URLs, a writer, and a rewriter
//! that sets the MPD-level BaseURLs (the router points a manifest at its edges with it).
//!
//! Scope: the static on-demand/live-profile manifests ffmpeg writes — `SegmentTemplate` with
//! `$RepresentationID$`, `$Number$` (also `$Number%05d$`), `$Bandwidth$`, `$Time$`, either a
//! fixed `duration` or a `SegmentTimeline`, inherited from the `AdaptationSet` and overridden
//! per `Representation` — and `BaseURL` at every level. Dynamic (live) manifests parse, but
//! asking for their segments is an error.
//!
//! The XML is read with `roxmltree`: a small read-only tree with one dependency (`memchr`); it
//! refuses DTDs (no entity expansion attacks) and takes a node limit, and keeps each node's byte
//! range, which the BaseURL rewriter uses to edit the text in place (every element and attribute
//! it does not model is kept as it was).
//!
//! Hostile input: the text is capped at [`MAX_MPD_BYTES`], the XML at [`MAX_XML_NODES`] nodes,
//! the manifest at [`MAX_REPRESENTATIONS`] representations, and every representation at
//! [`MAX_SEGMENTS`] segments (counted with checked arithmetic before anything is allocated).
//! Every failure is an [`MpdError`]; nothing here panics on input.

use std::fmt::Write as _;
use std::time::Duration;

/// Largest MPD accepted, in bytes.
pub const MAX_MPD_BYTES: usize = 1 << 20;
/// Most representations in one MPD (all periods together).
pub const MAX_REPRESENTATIONS: usize = 64;
/// Most segments one representation may list (per period; timelines included).
pub const MAX_SEGMENTS: u64 = 100_000;
/// Most XML nodes (elements, text, comments) the parser builds.
pub const MAX_XML_NODES: u32 = 200_000;
/// Most periods in one MPD.
pub const MAX_PERIODS: usize = 64;
/// Most BaseURL elements at one level.
pub const MAX_BASE_URLS: usize = 16;
/// Widest zero-padding accepted in a `$Number%0Nd$` template identifier.
const MAX_FORMAT_WIDTH: usize = 20;

/// Why an MPD was refused; the text says what was wrong and where.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MpdError {
    /// The text is over [`MAX_MPD_BYTES`].
    #[error("the MPD is {0} bytes, more than the {MAX_MPD_BYTES}-byte limit")]
    TooLarge(usize),
    /// The bytes are not UTF-8 text.
    #[error("the MPD is not UTF-8 text")]
    NotUtf8,
    /// The XML itself is broken (or uses a DTD, or has too many nodes).
    #[error("the MPD is not well-formed XML: {0}")]
    Xml(String),
    /// The root element is not `<MPD>`.
    #[error("the root element is <{0}>, not <MPD>")]
    NotMpd(String),
    /// A required attribute is absent.
    #[error("<{element}> has no {attribute} attribute")]
    MissingAttribute { element: &'static str, attribute: &'static str },
    /// An attribute's value does not parse or is out of range.
    #[error("<{element}> has an invalid {attribute}=\"{value}\"")]
    InvalidAttribute { element: &'static str, attribute: &'static str, value: String },
    /// A required element is absent.
    #[error("the MPD has no {0}")]
    MissingElement(&'static str),
    /// One of the caps was exceeded.
    #[error("the MPD has too many {what} (limit {limit})")]
    TooMany { what: &'static str, limit: u64 },
    /// A `SegmentTemplate` string is malformed.
    #[error("bad segment template \"{template}\": {reason}")]
    BadTemplate { template: String, reason: &'static str },
    /// No representation has this id.
    #[error("no representation has id \"{0}\"")]
    UnknownRepresentation(String),
    /// The manifest is valid but uses something this crate does not implement.
    #[error("unsupported MPD: {0}")]
    Unsupported(&'static str),
}

/// `MPD@type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PresentationType {
    /// On demand: every segment exists when the manifest is read.
    #[default]
    Static,
    /// Live: segments appear over time.
    Dynamic,
}

/// The whole manifest.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Mpd {
    /// `type`.
    pub presentation_type: PresentationType,
    /// `profiles`, as written.
    pub profiles: Option<String>,
    /// `mediaPresentationDuration`.
    pub media_presentation_duration: Option<Duration>,
    /// `minBufferTime`.
    pub min_buffer_time: Option<Duration>,
    /// `maxSegmentDuration`.
    pub max_segment_duration: Option<Duration>,
    /// MPD-level `BaseURL`s: alternative locations (replicas) of the whole presentation, in
    /// order of preference.
    pub base_urls: Vec<String>,
    /// The periods, in order.
    pub periods: Vec<Period>,
}

/// `<Period>`.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Period {
    /// `id`.
    pub id: Option<String>,
    /// `start`.
    pub start: Option<Duration>,
    /// `duration`.
    pub duration: Option<Duration>,
    /// `BaseURL`s of this period (relative to the MPD-level one).
    pub base_urls: Vec<String>,
    /// The adaptation sets, in order.
    pub adaptation_sets: Vec<AdaptationSet>,
}

/// `<AdaptationSet>`.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct AdaptationSet {
    /// `id`.
    pub id: Option<String>,
    /// `contentType` (`video`, `audio`, ...).
    pub content_type: Option<String>,
    /// `mimeType` (inherited by representations that have none).
    pub mime_type: Option<String>,
    /// `codecs` (inherited likewise).
    pub codecs: Option<String>,
    /// `BaseURL`s of this set.
    pub base_urls: Vec<String>,
    /// The set's own `SegmentTemplate`, which representations inherit from.
    pub segment_template: Option<SegmentTemplate>,
    /// The representations, in order.
    pub representations: Vec<Representation>,
}

/// `<Representation>`: one encoding of the content.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Representation {
    /// `id` (required; unique within its period).
    pub id: String,
    /// `bandwidth` in bits per second (required): the label, not a measurement.
    pub bandwidth: u64,
    /// `width` in pixels.
    pub width: Option<u32>,
    /// `height` in pixels.
    pub height: Option<u32>,
    /// `codecs`, or the adaptation set's.
    pub codecs: Option<String>,
    /// `mimeType`, or the adaptation set's.
    pub mime_type: Option<String>,
    /// `BaseURL`s of this representation.
    pub base_urls: Vec<String>,
    /// The effective `SegmentTemplate`: the representation's own merged over its adaptation
    /// set's (each attribute from the innermost level that has it).
    pub segment_template: Option<SegmentTemplate>,
}

/// `<SegmentTemplate>` with its defaults applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentTemplate {
    /// `media`: the template of a media segment's URL.
    pub media: Option<String>,
    /// `initialization`: the template of the initialization segment's URL.
    pub initialization: Option<String>,
    /// `startNumber` (default 1).
    pub start_number: u64,
    /// `timescale`: units per second (default 1, never 0).
    pub timescale: u64,
    /// `duration` of every segment in `timescale` units (when there is no timeline).
    pub duration: Option<u64>,
    /// `presentationTimeOffset` in `timescale` units (default 0).
    pub presentation_time_offset: u64,
    /// `SegmentTimeline` entries, empty when the template has none.
    pub timeline: Vec<TimelineEntry>,
}

impl Default for SegmentTemplate {
    fn default() -> Self {
        SegmentTemplate {
            media: None,
            initialization: None,
            start_number: 1,
            timescale: 1,
            duration: None,
            presentation_time_offset: 0,
            timeline: Vec::new(),
        }
    }
}

/// `<S t d r>` of a `SegmentTimeline`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimelineEntry {
    /// `t`: start time in timescale units; absent means "right after the previous one".
    pub t: Option<u64>,
    /// `d`: duration in timescale units.
    pub d: u64,
    /// `r`: repeat count (this many more segments of the same duration); -1 repeats to the end
    /// of the period.
    pub r: i64,
}

/// The segments of one representation in one period.
#[derive(Debug, Clone, PartialEq)]
pub struct SegmentList {
    /// The representation's id.
    pub representation_id: String,
    /// The initialization segment's URL, if the template has one.
    pub init: Option<String>,
    /// The media segments in playback order.
    pub media: Vec<Segment>,
}

/// One media segment.
#[derive(Debug, Clone, PartialEq)]
pub struct Segment {
    /// `$Number$` of this segment.
    pub number: u64,
    /// `$Time$`: start in timescale units.
    pub time: u64,
    /// Start within the period, in seconds.
    pub start_s: f64,
    /// Duration in seconds.
    pub duration_s: f64,
    /// URL: the template expanded and joined to the Period/AdaptationSet/Representation
    /// BaseURLs (still relative to the MPD-level BaseURL and the MPD's own URL).
    pub url: String,
}

impl Mpd {
    /// Parses MPD bytes (UTF-8), enforcing every cap listed in the module header.
    pub fn parse_bytes(bytes: &[u8]) -> Result<Mpd, MpdError> {
        if bytes.len() > MAX_MPD_BYTES {
            return Err(MpdError::TooLarge(bytes.len()));
        }
        let text = std::str::from_utf8(bytes).map_err(|_| MpdError::NotUtf8)?;
        Mpd::parse(text)
    }

    /// Parses MPD text, enforcing every cap listed in the module header.
    pub fn parse(text: &str) -> Result<Mpd, MpdError> {
        let doc = parse_xml(text)?;
        let root = doc.root_element();
        let mpd = read_mpd(root)?;
        mpd.check_segment_counts()?;
        Ok(mpd)
    }

    /// Every representation of every period, in document order.
    pub fn representations(&self) -> impl Iterator<Item = &Representation> {
        self.periods
            .iter()
            .flat_map(|p| p.adaptation_sets.iter())
            .flat_map(|a| a.representations.iter())
    }

    /// The first representation with this id, with its period and adaptation set.
    pub fn find(
        &self,
        representation_id: &str,
    ) -> Option<(usize, &Period, &AdaptationSet, &Representation)> {
        self.periods.iter().enumerate().find_map(|(i, p)| {
            p.adaptation_sets.iter().find_map(|a| {
                a.representations.iter().find(|r| r.id == representation_id).map(|r| (i, p, a, r))
            })
        })
    }

    /// The length of period `index`: its `duration`, else up to the next period's `start`,
    /// else up to the end of the presentation.
    pub fn period_duration(&self, index: usize) -> Option<Duration> {
        let period = self.periods.get(index)?;
        if let Some(d) = period.duration {
            return Some(d);
        }
        let start = period.start.unwrap_or(Duration::ZERO);
        if let Some(next_start) = self.periods.get(index + 1).and_then(|p| p.start) {
            return next_start.checked_sub(start);
        }
        self.media_presentation_duration.and_then(|d| d.checked_sub(start))
    }

    /// The segments of a representation (in the first period that has it): the initialization
    /// URL and every media segment, with URLs joined to the Period/AdaptationSet/Representation
    /// BaseURLs but not to the MPD-level one (see [`Mpd::segment_urls`]).
    pub fn segments(&self, representation_id: &str) -> Result<SegmentList, MpdError> {
        if self.presentation_type == PresentationType::Dynamic {
            return Err(MpdError::Unsupported(
                "dynamic (live) manifests have no fixed segment list",
            ));
        }
        let (index, period, set, rep) = self
            .find(representation_id)
            .ok_or_else(|| MpdError::UnknownRepresentation(representation_id.to_string()))?;
        let template = rep
            .segment_template
            .as_ref()
            .ok_or(MpdError::Unsupported("representation without a SegmentTemplate"))?;
        let media_template = template
            .media
            .as_deref()
            .ok_or(MpdError::MissingAttribute { element: "SegmentTemplate", attribute: "media" })?;
        let base = [&period.base_urls, &set.base_urls, &rep.base_urls]
            .iter()
            .filter_map(|urls| urls.first())
            .fold(String::new(), |acc, u| resolve_url(&acc, u));
        let period_duration = self.period_duration(index);
        let times = segment_times(template, period_duration)?;
        let init = template
            .initialization
            .as_deref()
            .map(|t| expand_template(t, rep, template.start_number, 0))
            .transpose()?
            .map(|u| resolve_url(&base, &u));
        let timescale = template.timescale as f64;
        let offset = template.presentation_time_offset;
        let mut media = Vec::with_capacity(times.len());
        for (k, (time, duration)) in times.into_iter().enumerate() {
            let number = template.start_number.checked_add(k as u64).ok_or_else(|| {
                MpdError::InvalidAttribute {
                    element: "SegmentTemplate",
                    attribute: "startNumber",
                    value: template.start_number.to_string(),
                }
            })?;
            let url = resolve_url(&base, &expand_template(media_template, rep, number, time)?);
            media.push(Segment {
                number,
                time,
                start_s: time.saturating_sub(offset) as f64 / timescale,
                duration_s: duration as f64 / timescale,
                url,
            });
        }
        Ok(SegmentList { representation_id: rep.id.clone(), init, media })
    }

    /// Absolute URLs of a representation's segments, initialization segment first, resolved
    /// against the first MPD-level BaseURL and `mpd_url` (where the manifest was fetched).
    pub fn segment_urls(
        &self,
        representation_id: &str,
        mpd_url: &str,
    ) -> Result<Vec<String>, MpdError> {
        let list = self.segments(representation_id)?;
        let base = match self.base_urls.first() {
            Some(b) => resolve_url(mpd_url, b),
            None => mpd_url.to_string(),
        };
        Ok(list
            .init
            .iter()
            .map(String::as_str)
            .chain(list.media.iter().map(|s| s.url.as_str()))
            .map(|u| resolve_url(&base, u))
            .collect())
    }

    /// Writes the model as MPD XML (the DASH namespace; attributes the model does not hold
    /// are not written: use [`set_base_urls`] to edit a manifest in place instead).
    pub fn to_xml(&self) -> String {
        let mut out = String::new();
        out.push_str("<?xml version=\"1.0\" encoding=\"utf-8\"?>\n");
        out.push_str("<MPD xmlns=\"urn:mpeg:dash:schema:mpd:2011\"");
        let kind = match self.presentation_type {
            PresentationType::Static => "static",
            PresentationType::Dynamic => "dynamic",
        };
        attr(&mut out, "type", Some(kind));
        attr(&mut out, "profiles", self.profiles.as_deref());
        attr(
            &mut out,
            "mediaPresentationDuration",
            self.media_presentation_duration.map(iso).as_deref(),
        );
        attr(&mut out, "minBufferTime", self.min_buffer_time.map(iso).as_deref());
        attr(&mut out, "maxSegmentDuration", self.max_segment_duration.map(iso).as_deref());
        out.push_str(">\n");
        base_url_elements(&mut out, 1, &self.base_urls);
        for p in &self.periods {
            out.push_str("  <Period");
            attr(&mut out, "id", p.id.as_deref());
            attr(&mut out, "start", p.start.map(iso).as_deref());
            attr(&mut out, "duration", p.duration.map(iso).as_deref());
            out.push_str(">\n");
            base_url_elements(&mut out, 2, &p.base_urls);
            for a in &p.adaptation_sets {
                out.push_str("    <AdaptationSet");
                attr(&mut out, "id", a.id.as_deref());
                attr(&mut out, "contentType", a.content_type.as_deref());
                attr(&mut out, "mimeType", a.mime_type.as_deref());
                attr(&mut out, "codecs", a.codecs.as_deref());
                out.push_str(">\n");
                base_url_elements(&mut out, 3, &a.base_urls);
                if let Some(t) = &a.segment_template {
                    template_element(&mut out, 3, t);
                }
                for r in &a.representations {
                    out.push_str("      <Representation");
                    attr(&mut out, "id", Some(&r.id));
                    attr(&mut out, "bandwidth", Some(&r.bandwidth.to_string()));
                    attr(&mut out, "width", r.width.map(|v| v.to_string()).as_deref());
                    attr(&mut out, "height", r.height.map(|v| v.to_string()).as_deref());
                    // Inherited values are written only where they differ from the set's.
                    if r.codecs != a.codecs {
                        attr(&mut out, "codecs", r.codecs.as_deref());
                    }
                    if r.mime_type != a.mime_type {
                        attr(&mut out, "mimeType", r.mime_type.as_deref());
                    }
                    out.push_str(">\n");
                    base_url_elements(&mut out, 4, &r.base_urls);
                    if let Some(t) = &r.segment_template {
                        if a.segment_template.as_ref() != Some(t) {
                            template_element(&mut out, 4, t);
                        }
                    }
                    out.push_str("      </Representation>\n");
                }
                out.push_str("    </AdaptationSet>\n");
            }
            out.push_str("  </Period>\n");
        }
        out.push_str("</MPD>\n");
        out
    }

    /// Refuses a manifest with a representation over [`MAX_SEGMENTS`], without building any list.
    fn check_segment_counts(&self) -> Result<(), MpdError> {
        if self.presentation_type == PresentationType::Dynamic {
            return Ok(());
        }
        for (i, p) in self.periods.iter().enumerate() {
            let duration = self.period_duration(i);
            for r in p.adaptation_sets.iter().flat_map(|a| a.representations.iter()) {
                if let Some(t) = &r.segment_template {
                    segment_count(t, duration)?;
                }
            }
        }
        Ok(())
    }
}

/// Replaces the MPD-level `BaseURL`s of a manifest with `urls` (in order of preference),
/// keeping every other byte of the document. An empty `urls` removes them. The result is
/// checked to parse.
pub fn set_base_urls(text: &str, urls: &[&str]) -> Result<String, MpdError> {
    if urls.len() > MAX_BASE_URLS {
        return Err(MpdError::TooMany { what: "BaseURLs", limit: MAX_BASE_URLS as u64 });
    }
    let doc = parse_xml(text)?;
    let root = doc.root_element();
    if root.tag_name().name() != "MPD" {
        return Err(MpdError::NotMpd(root.tag_name().name().to_string()));
    }
    let children: Vec<_> = root.children().collect();
    let first_child = children.first().ok_or(MpdError::MissingElement("Period"))?;
    // BaseURL goes after ProgramInformation in the schema's order; otherwise first.
    let insert_at = children
        .iter()
        .rfind(|n| n.is_element() && n.tag_name().name() == "ProgramInformation")
        .map(|n| n.range().end)
        .unwrap_or(first_child.range().start);
    let removed: Vec<std::ops::Range<usize>> = children
        .iter()
        .filter(|n| n.is_element() && n.tag_name().name() == "BaseURL")
        .map(|n| n.range())
        .collect();
    // Prefix the element names like the root's (`<mpd:MPD>` documents).
    let qname: String = text[root.range().start..]
        .chars()
        .skip(1)
        .take_while(|c| !c.is_whitespace() && *c != '>' && *c != '/')
        .collect();
    let prefix = qname.strip_suffix("MPD").unwrap_or("");
    let mut inserted = String::new();
    for u in urls {
        let _ = write!(inserted, "\n\t<{prefix}BaseURL>{}</{prefix}BaseURL>", escape(u));
    }
    let mut out = String::with_capacity(text.len() + inserted.len());
    let mut pos = 0;
    let mut inserted_done = false;
    for r in &removed {
        if !inserted_done && insert_at <= r.start {
            out.push_str(&text[pos..insert_at]);
            out.push_str(&inserted);
            pos = insert_at;
            inserted_done = true;
        }
        out.push_str(&text[pos..r.start]);
        pos = r.end;
    }
    if !inserted_done {
        out.push_str(&text[pos..insert_at]);
        out.push_str(&inserted);
        pos = insert_at;
    }
    out.push_str(&text[pos..]);
    Mpd::parse(&out)?;
    Ok(out)
}

/// Resolves `reference` against `base` the way a browser does for the common cases: an
/// absolute reference (`scheme://...`) stands alone, `//host/...` takes the base's scheme,
/// `/path` the base's origin, anything else replaces the base's last path segment (the query
/// and fragment of the base are dropped). An empty base leaves the reference as it is.
pub fn resolve_url(base: &str, reference: &str) -> String {
    if reference.is_empty() {
        return base.to_string();
    }
    if base.is_empty() || has_scheme(reference) {
        return reference.to_string();
    }
    let base = base.split(['?', '#']).next().unwrap_or(base);
    let scheme_end = if has_scheme(base) { base.find("://").map(|i| i + 3) } else { None };
    if let Some(rest) = reference.strip_prefix("//") {
        let scheme = scheme_end.map(|e| &base[..e - 2]).unwrap_or("");
        return format!("{scheme}//{rest}");
    }
    if reference.starts_with('/') {
        let origin = match scheme_end {
            Some(e) => &base[..base[e..].find('/').map(|i| e + i).unwrap_or(base.len())],
            None => "",
        };
        return format!("{origin}{reference}");
    }
    let authority_end =
        scheme_end.map(|e| base[e..].find('/').map(|i| e + i).unwrap_or(base.len())).unwrap_or(0);
    let dir = match base[authority_end..].rfind('/') {
        Some(i) => &base[..authority_end + i + 1],
        None if scheme_end.is_some() => return format!("{base}/{reference}"),
        None => "",
    };
    format!("{dir}{reference}")
}

/// True for `scheme:` followed by `//` (http, https, file, ...).
fn has_scheme(s: &str) -> bool {
    match s.find("://") {
        Some(i) if i > 0 => {
            let scheme = &s[..i];
            scheme.chars().next().is_some_and(|c| c.is_ascii_alphabetic())
                && scheme.chars().all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c))
        }
        _ => false,
    }
}

/// Parses ISO 8601 durations as MPDs use them: `PnYnMnDTnHnMnS` with only the last number
/// fractional (`PT12.0S`, `PT1M4.5S`, `P1DT2H`). Years and months are refused (no fixed length).
pub fn parse_iso_duration(s: &str) -> Option<Duration> {
    let rest = s.trim().strip_prefix('P')?;
    if rest.is_empty() {
        return None;
    }
    let (date, time) = match rest.split_once('T') {
        Some((d, t)) if !t.is_empty() => (d, Some(t)),
        Some(_) => return None,
        None => (rest, None),
    };
    let mut nanos: u128 = 0;
    let mut parse_part = |part: &str, units: &[(char, u128)]| -> Option<()> {
        let mut number = String::new();
        let mut allowed = units.iter();
        for c in part.chars() {
            if c.is_ascii_digit() || c == '.' {
                if number.len() >= 30 {
                    return None;
                }
                number.push(c);
                continue;
            }
            // Designators must come in order, each at most once.
            let (_, unit) = allowed.by_ref().find(|(d, _)| *d == c)?;
            nanos = nanos.checked_add(parse_decimal_nanos(&number, *unit)?)?;
            number.clear();
        }
        number.is_empty().then_some(())
    };
    parse_part(date, &[('D', 86_400_000_000_000)])?;
    if let Some(t) = time {
        parse_part(t, &[('H', 3_600_000_000_000), ('M', 60_000_000_000), ('S', 1_000_000_000)])?;
    }
    let secs = u64::try_from(nanos / 1_000_000_000).ok()?;
    Some(Duration::new(secs, (nanos % 1_000_000_000) as u32))
}

/// `"12.5"` × `unit` nanoseconds, exactly (fraction digits past nanoseconds are dropped).
fn parse_decimal_nanos(number: &str, unit: u128) -> Option<u128> {
    let (int, frac) = number.split_once('.').unwrap_or((number, ""));
    if int.is_empty() && frac.is_empty() {
        return None;
    }
    if !int.bytes().all(|b| b.is_ascii_digit()) || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let int_value: u128 = if int.is_empty() { 0 } else { int.parse().ok()? };
    let mut total = int_value.checked_mul(unit)?;
    let mut scale = unit;
    for b in frac.bytes().take(18) {
        scale /= 10;
        total = total.checked_add(u128::from(b - b'0') * scale)?;
    }
    Some(total)
}

/// Formats a duration as `PT<seconds>S` (millisecond precision, as ffmpeg writes it).
fn iso(d: Duration) -> String {
    let ms = d.as_millis();
    format!("PT{}.{:03}S", ms / 1000, ms % 1000)
}

fn parse_xml(text: &str) -> Result<roxmltree::Document<'_>, MpdError> {
    if text.len() > MAX_MPD_BYTES {
        return Err(MpdError::TooLarge(text.len()));
    }
    let options = roxmltree::ParsingOptions {
        allow_dtd: false,
        nodes_limit: MAX_XML_NODES,
        ..roxmltree::ParsingOptions::default()
    };
    roxmltree::Document::parse_with_options(text, options).map_err(|e| MpdError::Xml(e.to_string()))
}

type Node<'a, 'input> = roxmltree::Node<'a, 'input>;

fn elements<'a, 'input: 'a>(
    node: Node<'a, 'input>,
    name: &'static str,
) -> impl Iterator<Item = Node<'a, 'input>> {
    node.children().filter(move |n| n.is_element() && n.tag_name().name() == name)
}

fn read_mpd(root: Node<'_, '_>) -> Result<Mpd, MpdError> {
    if root.tag_name().name() != "MPD" {
        return Err(MpdError::NotMpd(root.tag_name().name().chars().take(64).collect()));
    }
    let presentation_type = match root.attribute("type") {
        None | Some("static") => PresentationType::Static,
        Some("dynamic") => PresentationType::Dynamic,
        Some(v) => return Err(invalid("MPD", "type", v)),
    };
    let mut mpd = Mpd {
        presentation_type,
        profiles: root.attribute("profiles").map(str::to_string),
        media_presentation_duration: duration_attr(root, "MPD", "mediaPresentationDuration")?,
        min_buffer_time: duration_attr(root, "MPD", "minBufferTime")?,
        max_segment_duration: duration_attr(root, "MPD", "maxSegmentDuration")?,
        base_urls: base_urls(root)?,
        periods: Vec::new(),
    };
    let mut representations = 0usize;
    for (i, p) in elements(root, "Period").enumerate() {
        if i >= MAX_PERIODS {
            return Err(MpdError::TooMany { what: "periods", limit: MAX_PERIODS as u64 });
        }
        mpd.periods.push(read_period(p, &mut representations)?);
    }
    if mpd.periods.is_empty() {
        return Err(MpdError::MissingElement("Period"));
    }
    Ok(mpd)
}

fn read_period(node: Node<'_, '_>, representations: &mut usize) -> Result<Period, MpdError> {
    let mut period = Period {
        id: node.attribute("id").map(str::to_string),
        start: duration_attr(node, "Period", "start")?,
        duration: duration_attr(node, "Period", "duration")?,
        base_urls: base_urls(node)?,
        adaptation_sets: Vec::new(),
    };
    for a in elements(node, "AdaptationSet") {
        let set_template = elements(a, "SegmentTemplate")
            .next()
            .map(|t| read_template(t, &SegmentTemplate::default()))
            .transpose()?;
        let mut set = AdaptationSet {
            id: a.attribute("id").map(str::to_string),
            content_type: a.attribute("contentType").map(str::to_string),
            mime_type: a.attribute("mimeType").map(str::to_string),
            codecs: a.attribute("codecs").map(str::to_string),
            base_urls: base_urls(a)?,
            segment_template: set_template.clone(),
            representations: Vec::new(),
        };
        for r in elements(a, "Representation") {
            *representations += 1;
            if *representations > MAX_REPRESENTATIONS {
                return Err(MpdError::TooMany {
                    what: "representations",
                    limit: MAX_REPRESENTATIONS as u64,
                });
            }
            let id = r
                .attribute("id")
                .ok_or(MpdError::MissingAttribute { element: "Representation", attribute: "id" })?;
            if id.is_empty() || id.chars().any(char::is_whitespace) {
                return Err(invalid("Representation", "id", id));
            }
            let bandwidth = r.attribute("bandwidth").ok_or(MpdError::MissingAttribute {
                element: "Representation",
                attribute: "bandwidth",
            })?;
            let bandwidth =
                bandwidth.parse().map_err(|_| invalid("Representation", "bandwidth", bandwidth))?;
            let own_template = elements(r, "SegmentTemplate").next();
            let segment_template = match (own_template, &set_template) {
                (Some(t), Some(parent)) => Some(read_template(t, parent)?),
                (Some(t), None) => Some(read_template(t, &SegmentTemplate::default())?),
                (None, parent) => parent.clone(),
            };
            set.representations.push(Representation {
                id: id.to_string(),
                bandwidth,
                width: number_attr(r, "Representation", "width")?,
                height: number_attr(r, "Representation", "height")?,
                codecs: r.attribute("codecs").map(str::to_string).or_else(|| set.codecs.clone()),
                mime_type: r
                    .attribute("mimeType")
                    .map(str::to_string)
                    .or_else(|| set.mime_type.clone()),
                base_urls: base_urls(r)?,
                segment_template,
            });
        }
        period.adaptation_sets.push(set);
    }
    Ok(period)
}

/// Reads a `SegmentTemplate`, taking each attribute it lacks from `parent`.
fn read_template(
    node: Node<'_, '_>,
    parent: &SegmentTemplate,
) -> Result<SegmentTemplate, MpdError> {
    const E: &str = "SegmentTemplate";
    let timescale = number_attr::<u64>(node, E, "timescale")?.unwrap_or(parent.timescale);
    if timescale == 0 {
        return Err(invalid(E, "timescale", "0"));
    }
    let duration = number_attr::<u64>(node, E, "duration")?.or(parent.duration);
    if duration == Some(0) {
        return Err(invalid(E, "duration", "0"));
    }
    let mut template = SegmentTemplate {
        media: node.attribute("media").map(str::to_string).or_else(|| parent.media.clone()),
        initialization: node
            .attribute("initialization")
            .map(str::to_string)
            .or_else(|| parent.initialization.clone()),
        start_number: number_attr(node, E, "startNumber")?.unwrap_or(parent.start_number),
        timescale,
        duration,
        presentation_time_offset: number_attr(node, E, "presentationTimeOffset")?
            .unwrap_or(parent.presentation_time_offset),
        timeline: parent.timeline.clone(),
    };
    if let Some(timeline) = elements(node, "SegmentTimeline").next() {
        template.timeline.clear();
        for (i, s) in elements(timeline, "S").enumerate() {
            if i as u64 >= MAX_SEGMENTS {
                return Err(MpdError::TooMany { what: "segments", limit: MAX_SEGMENTS });
            }
            let d = number_attr::<u64>(s, "S", "d")?
                .ok_or(MpdError::MissingAttribute { element: "S", attribute: "d" })?;
            if d == 0 {
                return Err(invalid("S", "d", "0"));
            }
            let r = number_attr::<i64>(s, "S", "r")?.unwrap_or(0);
            if r < -1 {
                return Err(invalid("S", "r", &r.to_string()));
            }
            template.timeline.push(TimelineEntry { t: number_attr(s, "S", "t")?, d, r });
        }
    }
    for t in [&template.media, &template.initialization].into_iter().flatten() {
        check_template(t)?;
    }
    Ok(template)
}

/// Segment count of a template in a period of `period` length, refusing more than
/// [`MAX_SEGMENTS`]. Nothing is allocated per segment.
fn segment_count(t: &SegmentTemplate, period: Option<Duration>) -> Result<u64, MpdError> {
    let too_many = MpdError::TooMany { what: "segments", limit: MAX_SEGMENTS };
    if !t.timeline.is_empty() {
        return Ok(timeline_runs(t, period)?.iter().map(|run| run.2).sum());
    }
    let Some(seg) = t.duration else {
        return Err(MpdError::MissingAttribute {
            element: "SegmentTemplate",
            attribute: "duration",
        });
    };
    let period = period.ok_or(MpdError::MissingAttribute {
        element: "MPD",
        attribute: "mediaPresentationDuration",
    })?;
    // ceil(period × timescale / (seg × 1e9)), exactly; a product past u128 is far over the cap.
    let units = period.as_nanos().checked_mul(u128::from(t.timescale)).ok_or(too_many.clone())?;
    let per = u128::from(seg) * 1_000_000_000;
    let count = units.div_ceil(per);
    if count > u128::from(MAX_SEGMENTS) {
        return Err(too_many);
    }
    Ok(count as u64)
}

/// A timeline as runs of equal segments: (first start time, duration, count), each checked
/// against the cap and against time overflow; the runs' counts add up to at most
/// [`MAX_SEGMENTS`].
fn timeline_runs(
    t: &SegmentTemplate,
    period: Option<Duration>,
) -> Result<Vec<(u64, u64, u64)>, MpdError> {
    let too_many = || MpdError::TooMany { what: "segments", limit: MAX_SEGMENTS };
    let overflow = || invalid("SegmentTimeline", "t", "(times overflow)");
    // End of the period in timescale units, for `r = -1`.
    let period_end = period.map(|p| {
        let units = p.as_nanos().saturating_mul(u128::from(t.timescale)) / 1_000_000_000;
        u64::try_from(units).unwrap_or(u64::MAX).saturating_add(t.presentation_time_offset)
    });
    let mut runs = Vec::with_capacity(t.timeline.len());
    let mut count = 0u64;
    let mut next = t.presentation_time_offset;
    for (i, s) in t.timeline.iter().enumerate() {
        let time = s.t.unwrap_or(next);
        let repeats: u64 = if s.r >= 0 {
            s.r as u64
        } else {
            // Until the next S's t, else the end of the period.
            let end = match t.timeline.get(i + 1).and_then(|n| n.t) {
                Some(e) => e,
                None => period_end.ok_or(MpdError::MissingAttribute {
                    element: "MPD",
                    attribute: "mediaPresentationDuration",
                })?,
            };
            end.saturating_sub(time).div_ceil(s.d).saturating_sub(1)
        };
        let total = repeats.checked_add(1).ok_or_else(too_many)?;
        count = count.saturating_add(total);
        if count > MAX_SEGMENTS {
            return Err(too_many());
        }
        next = s.d.checked_mul(total).and_then(|d| d.checked_add(time)).ok_or_else(overflow)?;
        runs.push((time, s.d, total));
    }
    Ok(runs)
}

/// (time, duration) of each segment in timescale units.
fn segment_times(
    t: &SegmentTemplate,
    period: Option<Duration>,
) -> Result<Vec<(u64, u64)>, MpdError> {
    let overflow = || invalid("SegmentTemplate", "duration", "(times overflow)");
    let count = segment_count(t, period)?;
    let mut out = Vec::with_capacity(count as usize);
    if t.timeline.is_empty() {
        let Some(seg) = t.duration else {
            return Err(MpdError::MissingAttribute {
                element: "SegmentTemplate",
                attribute: "duration",
            });
        };
        for k in 0..count {
            let time = k
                .checked_mul(seg)
                .and_then(|x| x.checked_add(t.presentation_time_offset))
                .ok_or_else(overflow)?;
            out.push((time, seg));
        }
        return Ok(out);
    }
    for (start, d, total) in timeline_runs(t, period)? {
        // `timeline_runs` checked that start + d × total does not overflow.
        out.extend((0..total).map(|k| (start + k * d, d)));
    }
    Ok(out)
}

/// Checks that every `$...$` identifier in a template is one we can expand.
fn check_template(template: &str) -> Result<(), MpdError> {
    let probe = Representation { id: "x".into(), ..Representation::default() };
    expand_template(template, &probe, 1, 0).map(|_| ())
}

/// Expands `$RepresentationID$`, `$Number$`, `$Bandwidth$`, `$Time$` (each optionally with a
/// `%0Nd` format) and `$$`.
fn expand_template(
    template: &str,
    rep: &Representation,
    number: u64,
    time: u64,
) -> Result<String, MpdError> {
    let bad =
        |reason| MpdError::BadTemplate { template: template.chars().take(200).collect(), reason };
    let mut out = String::with_capacity(template.len() + 16);
    let mut parts = template.split('$');
    // split gives: literal, ident, literal, ident, ..., literal (an odd count when balanced).
    out.push_str(parts.next().unwrap_or(""));
    while let Some(ident) = parts.next() {
        let literal = parts.next().ok_or_else(|| bad("unbalanced $"))?;
        if ident.is_empty() {
            out.push('$');
        } else {
            let (name, format) = match ident.split_once('%') {
                Some((n, f)) => (n, Some(f)),
                None => (ident, None),
            };
            let width = match format {
                None => 0,
                Some(f) => {
                    let digits = f
                        .strip_prefix('0')
                        .and_then(|f| f.strip_suffix('d'))
                        .ok_or_else(|| bad("format must be %0Nd"))?;
                    let w: usize = digits.parse().map_err(|_| bad("format must be %0Nd"))?;
                    if w > MAX_FORMAT_WIDTH {
                        return Err(bad("format width over 20"));
                    }
                    w
                }
            };
            match name {
                "RepresentationID" if format.is_none() => out.push_str(&rep.id),
                "Number" => {
                    let _ = write!(out, "{number:0width$}");
                }
                "Bandwidth" => {
                    let _ = write!(out, "{:0width$}", rep.bandwidth);
                }
                "Time" => {
                    let _ = write!(out, "{time:0width$}");
                }
                _ => return Err(bad("unknown $identifier$")),
            }
        }
        out.push_str(literal);
    }
    Ok(out)
}

fn invalid(element: &'static str, attribute: &'static str, value: &str) -> MpdError {
    MpdError::InvalidAttribute { element, attribute, value: value.chars().take(100).collect() }
}

fn number_attr<T: std::str::FromStr>(
    node: Node<'_, '_>,
    element: &'static str,
    attribute: &'static str,
) -> Result<Option<T>, MpdError> {
    node.attribute(attribute)
        .map(|v| v.trim().parse().map_err(|_| invalid(element, attribute, v)))
        .transpose()
}

fn duration_attr(
    node: Node<'_, '_>,
    element: &'static str,
    attribute: &'static str,
) -> Result<Option<Duration>, MpdError> {
    node.attribute(attribute)
        .map(|v| parse_iso_duration(v).ok_or_else(|| invalid(element, attribute, v)))
        .transpose()
}

fn base_urls(node: Node<'_, '_>) -> Result<Vec<String>, MpdError> {
    let mut out = Vec::new();
    for (i, b) in elements(node, "BaseURL").enumerate() {
        if i >= MAX_BASE_URLS {
            return Err(MpdError::TooMany { what: "BaseURLs", limit: MAX_BASE_URLS as u64 });
        }
        let text: String = b.children().filter_map(|c| c.text()).collect();
        out.push(text.trim().to_string());
    }
    Ok(out)
}

/// `s` with the five XML (and HTML) special characters escaped.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c => out.push(c),
        }
    }
    out
}

fn attr(out: &mut String, name: &str, value: Option<&str>) {
    if let Some(v) = value {
        let _ = write!(out, " {name}=\"{}\"", escape(v));
    }
}

fn base_url_elements(out: &mut String, depth: usize, urls: &[String]) {
    for u in urls {
        let _ = writeln!(out, "{}<BaseURL>{}</BaseURL>", "  ".repeat(depth), escape(u));
    }
}

fn template_element(out: &mut String, depth: usize, t: &SegmentTemplate) {
    let pad = "  ".repeat(depth);
    let _ = write!(out, "{pad}<SegmentTemplate");
    attr(out, "timescale", Some(&t.timescale.to_string()));
    attr(out, "duration", t.duration.map(|d| d.to_string()).as_deref());
    attr(out, "initialization", t.initialization.as_deref());
    attr(out, "media", t.media.as_deref());
    attr(out, "startNumber", Some(&t.start_number.to_string()));
    if t.presentation_time_offset != 0 {
        attr(out, "presentationTimeOffset", Some(&t.presentation_time_offset.to_string()));
    }
    if t.timeline.is_empty() {
        out.push_str("/>\n");
        return;
    }
    let _ = writeln!(out, ">\n{pad}  <SegmentTimeline>");
    for s in &t.timeline {
        let _ = write!(out, "{pad}    <S");
        attr(out, "t", s.t.map(|v| v.to_string()).as_deref());
        attr(out, "d", Some(&s.d.to_string()));
        if s.r != 0 {
            attr(out, "r", Some(&s.r.to_string()));
        }
        out.push_str("/>\n");
    }
    let _ = writeln!(out, "{pad}  </SegmentTimeline>\n{pad}</SegmentTemplate>");
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What ffmpeg 5.1 wrote for a 12 s, 2-rung, 4 s-segment ladder with audio.
    pub(crate) const FFMPEG_MPD: &str = include_str!("../tests/data/ffmpeg-2rung.mpd");

    #[test]
    fn parses_the_manifest_ffmpeg_writes() {
        let mpd = Mpd::parse(FFMPEG_MPD).unwrap();
        assert_eq!(mpd.presentation_type, PresentationType::Static);
        assert_eq!(mpd.media_presentation_duration, Some(Duration::from_secs(12)));
        assert_eq!(mpd.min_buffer_time, Some(Duration::from_secs(8)));
        assert_eq!(mpd.periods.len(), 1);
        let sets = &mpd.periods[0].adaptation_sets;
        assert_eq!(sets.len(), 2);
        assert_eq!(sets[0].content_type.as_deref(), Some("video"));
        let reps: Vec<_> = mpd.representations().collect();
        assert_eq!(reps.len(), 3);
        assert_eq!(reps[0].id, "0");
        assert_eq!(reps[0].bandwidth, 200_000);
        assert_eq!((reps[0].width, reps[0].height), (Some(320), Some(180)));
        assert_eq!(reps[0].codecs.as_deref(), Some("avc1.4d400c"));
        assert_eq!(reps[0].mime_type.as_deref(), Some("video/mp4"));
        assert_eq!(reps[1].bandwidth, 600_000);
        assert_eq!(reps[2].mime_type.as_deref(), Some("audio/mp4"));
        let t = reps[0].segment_template.as_ref().unwrap();
        assert_eq!(t.timescale, 1_000_000);
        assert_eq!(t.duration, Some(4_000_000));
        assert_eq!(t.start_number, 1);
        assert_eq!(t.media.as_deref(), Some("chunk-$RepresentationID$-$Number%05d$.m4s"));
    }

    #[test]
    fn segment_list_and_urls() {
        let mpd = Mpd::parse(FFMPEG_MPD).unwrap();
        let list = mpd.segments("1").unwrap();
        assert_eq!(list.init.as_deref(), Some("init-1.mp4"));
        let urls: Vec<_> = list.media.iter().map(|s| s.url.as_str()).collect();
        assert_eq!(urls, ["chunk-1-00001.m4s", "chunk-1-00002.m4s", "chunk-1-00003.m4s"]);
        assert_eq!(list.media[1].number, 2);
        assert_eq!(list.media[1].time, 4_000_000);
        assert_eq!(list.media[1].start_s, 4.0);
        assert_eq!(list.media[1].duration_s, 4.0);
        let abs = mpd.segment_urls("0", "http://127.0.0.1:8080/movie1/manifest.mpd").unwrap();
        assert_eq!(abs.len(), 4);
        assert_eq!(abs[0], "http://127.0.0.1:8080/movie1/init-0.mp4");
        assert_eq!(abs[3], "http://127.0.0.1:8080/movie1/chunk-0-00003.m4s");
        assert_eq!(mpd.segments("9").unwrap_err(), MpdError::UnknownRepresentation("9".into()));
    }

    #[test]
    fn base_urls_at_every_level_are_joined() {
        let xml = r#"<MPD type="static" mediaPresentationDuration="PT10S">
          <BaseURL>http://edge1.test/m/</BaseURL><BaseURL>http://edge2.test/m/</BaseURL>
          <Period><BaseURL>p/</BaseURL>
            <AdaptationSet mimeType="video/mp4"><BaseURL>v/</BaseURL>
              <SegmentTemplate timescale="10" duration="40" media="$RepresentationID$/$Number$.m4s" startNumber="0"/>
              <Representation id="a" bandwidth="1000"><BaseURL>r/</BaseURL></Representation>
            </AdaptationSet></Period></MPD>"#;
        let mpd = Mpd::parse(xml).unwrap();
        assert_eq!(mpd.base_urls, ["http://edge1.test/m/", "http://edge2.test/m/"]);
        let list = mpd.segments("a").unwrap();
        // 10 s / 4 s: 3 segments, the last one short in reality but listed.
        assert_eq!(list.media.len(), 3);
        assert_eq!(list.media[0].url, "p/v/r/a/0.m4s");
        assert_eq!(list.init, None);
        let urls = mpd.segment_urls("a", "http://router.test/play/m/manifest.mpd").unwrap();
        assert_eq!(urls[2], "http://edge1.test/m/p/v/r/a/2.m4s");
        assert_eq!(mpd.representations().next().unwrap().mime_type.as_deref(), Some("video/mp4"));
    }

    #[test]
    fn segment_timeline() {
        let xml = r#"<MPD type="static" mediaPresentationDuration="PT20S"><Period>
            <AdaptationSet><Representation id="v" bandwidth="5">
              <SegmentTemplate timescale="1000" media="t-$Time$.m4s" initialization="i.mp4">
                <SegmentTimeline><S t="0" d="4000" r="2"/><S d="2000"/><S d="3000" r="-1"/></SegmentTimeline>
              </SegmentTemplate></Representation></AdaptationSet></Period></MPD>"#;
        let mpd = Mpd::parse(xml).unwrap();
        let list = mpd.segments("v").unwrap();
        let times: Vec<_> = list.media.iter().map(|s| s.time).collect();
        // 0,4000,8000 then 12000 (2 s), then 3 s ones until 20 s: 14000, 17000.
        assert_eq!(times, [0, 4000, 8000, 12000, 14000, 17000]);
        assert_eq!(list.media[4].url, "t-14000.m4s");
        assert_eq!(list.media[3].duration_s, 2.0);
    }

    #[test]
    fn hostile_inputs_are_typed_errors() {
        let big = format!("<MPD>{}</MPD>", " ".repeat(MAX_MPD_BYTES));
        assert_eq!(Mpd::parse(&big), Err(MpdError::TooLarge(big.len())));
        assert_eq!(Mpd::parse_bytes(b"\xff\xfe<MPD/>"), Err(MpdError::NotUtf8));
        assert!(matches!(Mpd::parse("<MPD><Period>"), Err(MpdError::Xml(_))));
        assert!(matches!(Mpd::parse("<html/>"), Err(MpdError::NotMpd(n)) if n == "html"));
        assert_eq!(Mpd::parse("<MPD/>"), Err(MpdError::MissingElement("Period")));
        // A DTD (billion laughs) is refused outright.
        let laughs = r#"<?xml version="1.0"?><!DOCTYPE l [<!ENTITY a "aaaa">]><MPD>&a;</MPD>"#;
        assert!(matches!(Mpd::parse(laughs), Err(MpdError::Xml(_))));

        let rep = |attrs: &str, template: &str| {
            format!(
                r#"<MPD mediaPresentationDuration="PT12S"><Period><AdaptationSet>
                <Representation {attrs}>{template}</Representation></AdaptationSet></Period></MPD>"#
            )
        };
        let tpl = r#"<SegmentTemplate timescale="1000" duration="4000" media="$Number$.m4s"/>"#;
        assert_eq!(
            Mpd::parse(&rep(r#"bandwidth="1""#, tpl)),
            Err(MpdError::MissingAttribute { element: "Representation", attribute: "id" })
        );
        assert_eq!(
            Mpd::parse(&rep(r#"id="a""#, tpl)),
            Err(MpdError::MissingAttribute { element: "Representation", attribute: "bandwidth" })
        );
        assert_eq!(
            Mpd::parse(&rep(r#"id="a" bandwidth="-5""#, tpl)),
            Err(invalid("Representation", "bandwidth", "-5"))
        );
        assert_eq!(
            Mpd::parse(&rep(r#"id="a" bandwidth="99999999999999999999999""#, tpl)),
            Err(invalid("Representation", "bandwidth", "99999999999999999999999"))
        );
        let ok = r#"id="a" bandwidth="1""#;
        assert_eq!(
            Mpd::parse(&rep(ok, r#"<SegmentTemplate timescale="0" duration="1" media="x"/>"#)),
            Err(invalid("SegmentTemplate", "timescale", "0"))
        );
        assert_eq!(
            Mpd::parse(&rep(ok, r#"<SegmentTemplate duration="0" media="x"/>"#)),
            Err(invalid("SegmentTemplate", "duration", "0"))
        );
        assert_eq!(
            Mpd::parse(&rep(ok, r#"<SegmentTemplate media="x"/>"#)),
            Err(MpdError::MissingAttribute { element: "SegmentTemplate", attribute: "duration" })
        );
        // 12 s in 1 µs segments: 12 million, over the cap.
        assert_eq!(
            Mpd::parse(&rep(
                ok,
                r#"<SegmentTemplate timescale="1000000" duration="1" media="x"/>"#
            )),
            Err(MpdError::TooMany { what: "segments", limit: MAX_SEGMENTS })
        );
        // A timeline with a huge repeat count.
        let huge = r#"<SegmentTemplate media="x"><SegmentTimeline><S d="1" r="9223372036854775807"/></SegmentTimeline></SegmentTemplate>"#;
        assert_eq!(
            Mpd::parse(&rep(ok, huge)),
            Err(MpdError::TooMany { what: "segments", limit: MAX_SEGMENTS })
        );
        // Period × timescale past u128: over the cap, not an arithmetic overflow.
        let long = r#"<MPD mediaPresentationDuration="PT18446744073709551615S"><Period><AdaptationSet>
            <Representation id="a" bandwidth="1"><SegmentTemplate timescale="18446744073709551615"
            duration="1" media="x"/></Representation></AdaptationSet></Period></MPD>"#;
        assert_eq!(
            Mpd::parse(long),
            Err(MpdError::TooMany { what: "segments", limit: MAX_SEGMENTS })
        );
        let wrap = r#"<SegmentTemplate media="x"><SegmentTimeline><S t="18446744073709551610" d="4" r="5"/></SegmentTimeline></SegmentTemplate>"#;
        assert_eq!(
            Mpd::parse(&rep(ok, wrap)),
            Err(invalid("SegmentTimeline", "t", "(times overflow)"))
        );
        assert!(matches!(
            Mpd::parse(&rep(ok, r#"<SegmentTemplate duration="1" media="$Nope$"/>"#)),
            Err(MpdError::BadTemplate { .. })
        ));
        assert!(matches!(
            Mpd::parse(&rep(ok, r#"<SegmentTemplate duration="1" media="$Number"/>"#)),
            Err(MpdError::BadTemplate { .. })
        ));
        assert!(matches!(
            Mpd::parse(&rep(ok, r#"<SegmentTemplate duration="1" media="$Number%099d$"/>"#)),
            Err(MpdError::BadTemplate { .. })
        ));
        let bad_duration = r#"<MPD mediaPresentationDuration="P1Y"><Period/></MPD>"#;
        assert_eq!(
            Mpd::parse(bad_duration),
            Err(invalid("MPD", "mediaPresentationDuration", "P1Y"))
        );
        let many: String = (0..=MAX_REPRESENTATIONS)
            .map(|i| format!(r#"<Representation id="r{i}" bandwidth="1"/>"#))
            .collect();
        let xml = format!("<MPD><Period><AdaptationSet>{many}</AdaptationSet></Period></MPD>");
        assert_eq!(
            Mpd::parse(&xml),
            Err(MpdError::TooMany { what: "representations", limit: MAX_REPRESENTATIONS as u64 })
        );
    }

    #[test]
    fn iso_durations() {
        assert_eq!(parse_iso_duration("PT12.0S"), Some(Duration::from_secs(12)));
        assert_eq!(parse_iso_duration("PT1M4.5S"), Some(Duration::from_millis(64_500)));
        assert_eq!(parse_iso_duration("P1DT1H"), Some(Duration::from_secs(90_000)));
        assert_eq!(parse_iso_duration("PT0.000001S"), Some(Duration::from_micros(1)));
        for bad in ["", "P", "PT", "12S", "PT1S2M", "PTxS", "PT1.2.3S", "PT.S", "P1M", "PT1"] {
            assert_eq!(parse_iso_duration(bad), None, "{bad}");
        }
        assert_eq!(parse_iso_duration("PT99999999999999999999999999H"), None);
    }

    #[test]
    fn url_resolution() {
        let b = "http://h:1/a/b/manifest.mpd?x=1";
        assert_eq!(resolve_url(b, "seg.m4s"), "http://h:1/a/b/seg.m4s");
        assert_eq!(resolve_url(b, "/root.m4s"), "http://h:1/root.m4s");
        assert_eq!(resolve_url(b, "//other/x"), "http://other/x");
        assert_eq!(resolve_url(b, "https://e/x"), "https://e/x");
        assert_eq!(resolve_url("http://h", "x"), "http://h/x");
        assert_eq!(resolve_url("", "x/y"), "x/y");
        assert_eq!(resolve_url("p/", "x"), "p/x");
        assert_eq!(resolve_url("p", "x"), "x");
    }

    #[test]
    fn writer_round_trips() {
        let mpd = Mpd::parse(FFMPEG_MPD).unwrap();
        let again = Mpd::parse(&mpd.to_xml()).unwrap();
        assert_eq!(again, mpd);
        let xml = r#"<MPD mediaPresentationDuration="PT20S"><BaseURL>a&amp;b/</BaseURL><Period>
            <AdaptationSet><SegmentTemplate timescale="1000" media="t-$Time$.m4s">
                <SegmentTimeline><S t="0" d="4000" r="4"/></SegmentTimeline></SegmentTemplate>
              <Representation id="v" bandwidth="5"/></AdaptationSet></Period></MPD>"#;
        let mpd = Mpd::parse(xml).unwrap();
        assert_eq!(mpd.base_urls, ["a&b/"]);
        assert_eq!(Mpd::parse(&mpd.to_xml()).unwrap(), mpd);
    }

    #[test]
    fn rewriting_base_urls_keeps_the_rest() {
        let out = set_base_urls(FFMPEG_MPD, &["http://e1/m/", "http://e2/m/?a&b"]).unwrap();
        let mpd = Mpd::parse(&out).unwrap();
        assert_eq!(mpd.base_urls, ["http://e1/m/", "http://e2/m/?a&b"]);
        assert!(out.contains("<AudioChannelConfiguration"));
        // BaseURL follows ProgramInformation.
        let pi = out.find("</ProgramInformation>").unwrap();
        assert!(out.find("<BaseURL>").unwrap() > pi);
        // Rewriting again replaces, not appends.
        let twice = set_base_urls(&out, &["http://e3/"]).unwrap();
        assert_eq!(Mpd::parse(&twice).unwrap().base_urls, ["http://e3/"]);
        assert_eq!(twice.matches("<BaseURL>").count(), 1);
        let none = set_base_urls(&twice, &[]).unwrap();
        assert!(Mpd::parse(&none).unwrap().base_urls.is_empty());
        let mut without = Mpd::parse(FFMPEG_MPD).unwrap();
        without.base_urls.clear();
        assert_eq!(Mpd::parse(&none).unwrap(), without);
        // No ProgramInformation: first child; prefixed documents keep their prefix.
        let pfx = r#"<d:MPD xmlns:d="urn:mpeg:dash:schema:mpd:2011" mediaPresentationDuration="PT4S"><d:BaseURL>old/</d:BaseURL><d:Period/></d:MPD>"#;
        let out = set_base_urls(pfx, &["new/"]).unwrap();
        assert_eq!(Mpd::parse(&out).unwrap().base_urls, ["new/"]);
        assert!(out.contains("<d:BaseURL>new/</d:BaseURL>"));
        assert!(!out.contains("old/"));
        assert!(matches!(set_base_urls("<x/>", &["a"]), Err(MpdError::NotMpd(_))));
    }
}
