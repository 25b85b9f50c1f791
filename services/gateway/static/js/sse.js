// Server-sent events over fetch(): EventSource can only GET, and /generate_stream is a POST.
//
// readEvents(response) yields {event, data} for each event in the body, parsed the way the
// SSE spec says (lines end in \n, \r\n or \r; several data: lines join with \n; a blank
// line dispatches; lines starting with ':' are comments). Aborting the fetch ends it with
// the fetch's AbortError, which the caller treats as "stopped".

export async function* readEvents(response) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();  // stream mode keeps multi-byte characters split across chunks whole
  let buffer = "";
  let event = "message";
  let data = [];
  try {
    while (true) {
      const { value, done } = await reader.read();
      buffer += done ? decoder.decode() : decoder.decode(value, { stream: true });
      // A lone \r at the end might be the first half of \r\n: keep it until more arrives.
      let cut;
      while ((cut = lineEnd(buffer, done)) !== null) {
        const [end, next] = cut;
        const line = buffer.slice(0, end);
        buffer = buffer.slice(next);
        if (line === "") {
          if (data.length) yield { event, data: data.join("\n") };
          event = "message";
          data = [];
          continue;
        }
        if (line.startsWith(":")) continue;
        const colon = line.indexOf(":");
        const field = colon < 0 ? line : line.slice(0, colon);
        let val = colon < 0 ? "" : line.slice(colon + 1);
        if (val.startsWith(" ")) val = val.slice(1);
        if (field === "event") event = val;
        else if (field === "data") data.push(val);
      }
      if (done) return;
    }
  } finally {
    reader.releaseLock();
  }
}

// [end of the first line, start of the next] in buf, or null when no complete line is there.
function lineEnd(buf, atEof) {
  for (let i = 0; i < buf.length; i++) {
    const c = buf[i];
    if (c === "\n") return [i, i + 1];
    if (c === "\r") {
      if (i + 1 < buf.length) return [i, buf[i + 1] === "\n" ? i + 2 : i + 1];
      return atEof ? [i, i + 1] : null;
    }
  }
  return null;
}
