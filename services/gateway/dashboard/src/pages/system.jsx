// The platform itself (administrators): the version running, a newer signed release and its
// changelog, the last update, the nightly update switch, and Debian's reboot request.
// Installing is `homeport update`'s, as root on the server: this page only looks and switches.
import { useState } from "preact/hooks";
import { get, post, put } from "../api.js";
import { ErrorNote, Loaded, PageHead, formatTime, relativeTime, useAsync } from "../ui/common.jsx";

const URL = "/platform/updates";

/** "just now" within a minute (the server's clock may run a little ahead), else "2 hours ago". */
function ago(iso) {
  return Math.abs(new Date(iso).getTime() - Date.now()) < 60_000 ? "just now" : relativeTime(iso);
}

function Reboot({ info }) {
  if (!info.reboot_required) return null;
  return (
    <section class="panel notice" aria-labelledby="reboot-head" role="status">
      <h2 id="reboot-head">Restart required</h2>
      <p>Debian installed security updates that take effect after the server restarts.</p>
      {info.reboot_packages.length > 0 && <p>Packages: {info.reboot_packages.join(", ")}</p>}
    </section>
  );
}

function LastUpdate({ last }) {
  if (!last) return <p>No platform update has run on this server yet.</p>;
  return (
    <p>
      Last update: {last.summary} (<time dateTime={last.at} title={formatTime(last.at)}>{ago(last.at)}</time>)
    </p>
  );
}

function Available({ info }) {
  if (info.check_error) {
    return (
      <div class="form-error" role="alert">
        The last check found no usable release: {info.check_error}
      </div>
    );
  }
  if (!info.available) {
    return info.checked_at ? <p class="ok-note">Homeport {info.version} is the newest release.</p> : null;
  }
  const a = info.available;
  return (
    <div class="notice changelog" aria-label="Available update">
      <h3>Homeport {a.version} is available</h3>
      {a.changelog && <pre class="changelog-text">{a.changelog}</pre>}
      <p class="hint">
        {info.auto_update ? "It is installed tonight, or now on the server with " : "Install it on the server with "}
        <code>sudo homeport update</code>. A version that fails its health check is rolled back by itself.
      </p>
    </div>
  );
}

function Nightly({ info, onChanged }) {
  const [busy, setBusy] = useState(false);
  const [error, setError] = useState(null);
  const change = async (e) => {
    setBusy(true);
    setError(null);
    try {
      onChanged(await put(`${URL}/settings`, { enabled: e.currentTarget.checked }));
    } catch (err) {
      setError(err);
    } finally {
      setBusy(false);
    }
  };
  return (
    <div class="field">
      <label>
        <input type="checkbox" checked={info.auto_update} disabled={busy} onChange={change} /> Install platform updates
        every night
      </label>
      <p class="hint">Off until you turn it on. The server checks once a night and rolls back an update that fails.</p>
      <ErrorNote error={error} />
    </div>
  );
}

function Updates({ info, onChanged }) {
  const [busy, setBusy] = useState(false);
  const [error, setError] = useState(null);
  const check = async () => {
    setBusy(true);
    setError(null);
    try {
      onChanged(await post(`${URL}/check`));
    } catch (err) {
      setError(err);
    } finally {
      setBusy(false);
    }
  };
  return (
    <section class="panel" aria-labelledby="version-head">
      <h2 id="version-head">Homeport {info.version}</h2>
      {!info.server_install ? (
        <p class="hint">
          Platform updates come with a server install (<code>deploy/install.sh</code>). Running with <code>make run</code>, update
          with git.
        </p>
      ) : (
        <>
          <Available info={info} />
          <p>
            Last checked:{" "}
            {info.checked_at ? (
              <time dateTime={info.checked_at} title={formatTime(info.checked_at)}>
                {ago(info.checked_at)}
              </time>
            ) : (
              "not yet"
            )}{" "}
            <button type="button" class="btn" disabled={busy} onClick={check}>
              {busy ? "Checking…" : "Check now"}
            </button>
          </p>
          <ErrorNote error={error} />
          <Nightly info={info} onChanged={onChanged} />
        </>
      )}
      <LastUpdate last={info.last_update} />
    </section>
  );
}

export function System() {
  const state = useAsync(() => get(URL), []);
  const [fresh, setFresh] = useState(null);
  const info = fresh || state.data;
  return (
    <>
      <PageHead title="System" />
      <Loaded state={{ ...state, data: info }} what="Loading the platform's state">
        {(data) => (
          <>
            <Reboot info={data} />
            <Updates info={data} onChanged={setFresh} />
          </>
        )}
      </Loaded>
    </>
  );
}
