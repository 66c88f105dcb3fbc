// An app's log: the last lines, then new ones followed live (Server-Sent Events, event "line").
import { useEffect, useLayoutEffect, useRef, useState } from "preact/hooks";
import { follow, get, withQuery } from "../api.js";
import { ErrorNote } from "../ui/common.jsx";

const MAX_LINES = 2000;
const FIRST_LINES = 200;
const RETRY_MS = 3000;

const capped = (lines) => (lines.length > MAX_LINES ? lines.slice(lines.length - MAX_LINES) : lines);

export function LogViewer({ appId }) {
  const [lines, setLines] = useState([]);
  const [error, setError] = useState(null);
  const [paused, setPaused] = useState(false);
  const [held, setHeld] = useState(0); // lines that came while paused
  const [link, setLink] = useState("connecting");
  const [attempt, setAttempt] = useState(0);
  const pausedRef = useRef(false);
  const pending = useRef([]);
  const pre = useRef(null);
  const atBottom = useRef(true);

  useEffect(() => {
    let stop = () => {};
    let live = true;
    let retry;
    setError(null);
    setLink("connecting");
    get(`/apps/${appId}/logs?tail=${FIRST_LINES}`)
      .then((first) => {
        if (!live) return;
        setLines(first.lines);
        // the stream goes on from the last line we have (or from the start, when there is none)
        const from = first.cursor ? { since: first.cursor } : { tail: FIRST_LINES };
        stop = follow(withQuery(`/apps/${appId}/logs/stream`, from), {
          open: () => setLink("following"),
          line: (line, ev) => {
            setLink("following");
            const text = typeof line === "string" ? line : ev.data;
            if (pausedRef.current) {
              pending.current = capped([...pending.current, text]);
              setHeld(pending.current.length);
            } else setLines((l) => capped([...l, text]));
          },
          error: (_, source) => setLink(source.readyState === EventSource.CLOSED ? "stopped" : "reconnecting"),
        });
      })
      .catch((e) => {
        if (!live) return;
        setError(e);
        if (e.status === 0) retry = setTimeout(() => setAttempt((n) => n + 1), RETRY_MS); // the network blinked
      });
    return () => {
      live = false;
      clearTimeout(retry);
      stop();
    };
  }, [appId, attempt]);

  useLayoutEffect(() => {
    const el = pre.current;
    if (el && atBottom.current && !paused) el.scrollTop = el.scrollHeight;
  }, [lines, paused]);

  const toggle = () => {
    if (paused) {
      setLines((l) => capped([...l, ...pending.current]));
      pending.current = [];
      setHeld(0);
      atBottom.current = true;
    }
    pausedRef.current = !paused;
    setPaused(!paused);
  };
  const onScroll = (e) => {
    const el = e.currentTarget;
    atBottom.current = el.scrollHeight - el.scrollTop - el.clientHeight < 8;
  };

  return (
    <section class="panel" aria-labelledby="logs-head">
      <div class="section-head">
        <h2 id="logs-head">Logs</h2>
        <span class="muted" role="status">
          {paused ? `paused${held ? `, ${held} new line${held === 1 ? "" : "s"} held` : ""}` : link}
        </span>
        <button type="button" class="btn btn-secondary" onClick={toggle}>
          {paused ? "Follow" : "Pause"}
        </button>
      </div>
      <ErrorNote error={error} retry={() => setAttempt((n) => n + 1)} />
      <pre class="logs" ref={pre} onScroll={onScroll} tabIndex={0} aria-label="Log lines">
        {lines.length ? lines.join("\n") : "No log lines yet."}
      </pre>
    </section>
  );
}
