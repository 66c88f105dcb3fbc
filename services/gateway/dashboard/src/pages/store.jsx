// The app store: search and tags over the catalog, one app's details, and (admins) installing.
import { useEffect, useState } from "preact/hooks";
import { get, withQuery } from "../api.js";
import { navigate, useRoute } from "../router.js";
import { useSession } from "../session.js";
import { Loaded, PageHead, useAsync } from "../ui/common.jsx";
import { Field } from "../ui/form.jsx";
import { AppIcon, Changelog, MIB, Prose, addonText } from "./apps_common.jsx";
import { InstallDialog } from "./apps_install.jsx";

const CHANGELOG_VERSIONS = 5; // how many of the newest versions the store page lists changes of

/** `value`, once it has stopped changing for `ms`. */
function useDebounced(value, ms) {
  const [settled, setSettled] = useState(value);
  useEffect(() => {
    const t = setTimeout(() => setSettled(value), ms);
    return () => clearTimeout(t);
  }, [value, ms]);
  return settled;
}

function TagFilter({ tags, tag, onTag }) {
  if (!tags.length) return null;
  return (
    <div class="tags" role="group" aria-label="Filter by tag">
      {tags.map((t) => (
        <button key={t} type="button" class="tag" aria-pressed={t === tag ? "true" : "false"} onClick={() => onTag(t === tag ? "" : t)}>
          {t}
        </button>
      ))}
    </div>
  );
}

function StoreCard({ item, admin, onInstall }) {
  return (
    <li class="card">
      <div class="card-head">
        <AppIcon src={item.icon_url} title={item.title} />
        <div>
          <h2>{item.title}</h2>
          <span class="muted">{item.version}</span>
        </div>
      </div>
      <p class="card-text">{item.tagline}</p>
      <ul class="tags" aria-label="Tags">
        {item.tags.map((t) => (
          <li key={t} class="badge">
            {t}
          </li>
        ))}
      </ul>
      <div class="card-foot">
        <a class="btn btn-secondary" href={`#/store/${encodeURIComponent(item.id)}`}>
          Details<span class="sr-only"> of {item.title}</span>
        </a>
        {admin && (
          <button type="button" class="btn btn-primary" aria-label={`Install ${item.title}`} onClick={() => onInstall(item)}>
            Install
          </button>
        )}
      </div>
    </li>
  );
}

export function Store() {
  const { me } = useSession();
  const [text, setText] = useState("");
  const tag = useRoute().query.get("tag") || "";
  const setTag = (t) => navigate(t ? `/store?tag=${encodeURIComponent(t)}` : "/store", { replace: true });
  const [installing, setInstalling] = useState(null);
  const query = useDebounced(text.trim(), 250);
  const catalog = useAsync(() => get(withQuery("/catalog", { text: query, tag })), [query, tag]);
  return (
    <>
      <PageHead title="App store" />
      <form class="store-filter" role="search" onSubmit={(e) => e.preventDefault()} noValidate>
        <Field label="Search apps" name="text" type="search" value={text} onValue={setText} autocomplete="off" />
      </form>
      <Loaded state={catalog} what="Loading the catalog">
        {(c) => (
          <>
            <TagFilter tags={c.tags} tag={tag} onTag={setTag} />
            <p class="muted" role="status">
              {c.items.length === 1 ? "1 app" : `${c.items.length} apps`}
              {query || tag ? " match" : ""}
            </p>
            {c.items.length ? (
              <ul class="cards">
                {c.items.map((item) => (
                  <StoreCard key={item.id} item={item} admin={me.is_admin} onInstall={setInstalling} />
                ))}
              </ul>
            ) : (
              <p class="notice">No app matches. Try other words or another tag.</p>
            )}
          </>
        )}
      </Loaded>
      {installing && <InstallDialog manifestId={installing.id} title={installing.title} open onClose={() => setInstalling(null)} />}
    </>
  );
}

function Facts({ m }) {
  return (
    <dl class="facts">
      <dt>Version</dt>
      <dd>{m.version}</dd>
      {m.versions && m.versions.length > 1 && (
        <>
          <dt>All versions</dt>
          <dd>{[...m.versions].reverse().join(", ")}</dd>
        </>
      )}
      <dt>Memory</dt>
      <dd>{Math.round(m.memory_limit / MIB)} MiB</dd>
      <dt>Needs</dt>
      <dd>{m.addons.length ? m.addons.map(addonText).join(", ") : "nothing else"}</dd>
      {m.single_user && (
        <>
          <dt>Users</dt>
          <dd>one user per installation</dd>
        </>
      )}
      {m.update_needs_approval && (
        <>
          <dt>Updates</dt>
          <dd>wait for an administrator's approval</dd>
        </>
      )}
      {m.min_platform_version && (
        <>
          <dt>Homeport</dt>
          <dd>{m.min_platform_version} or newer</dd>
        </>
      )}
    </dl>
  );
}

// Screenshots are shown only from this dashboard's own origin (the CSP allows no other).
const sameOrigin = (src) => typeof src === "string" && src.startsWith("/") && !src.startsWith("//");

function StoreAppPage({ m }) {
  const { me } = useSession();
  const [installing, setInstalling] = useState(false);
  const screenshots = (m.screenshots || []).filter(sameOrigin);
  const recent = [...(m.versions || [m.version])].reverse().slice(0, CHANGELOG_VERSIONS);
  return (
    <div class="apps-page">
      <p>
        <a href="#/store">← All apps</a>
      </p>
      <div class="page-head">
        <div class="card-head">
          <AppIcon src={m.icon_url} title={m.title} size="large" />
          <div>
            <h1>{m.title}</h1>
            <p class="muted tagline">{m.tagline}</p>
          </div>
        </div>
        {me.is_admin && (
          <div class="page-actions">
            <button type="button" class="btn btn-primary" onClick={() => setInstalling(true)}>
              Install
            </button>
          </div>
        )}
      </div>
      <div class="grid-2 store-detail">
        <section class="panel" aria-labelledby="about">
          <h2 id="about">About</h2>
          <Prose text={m.description || m.tagline} />
          {m.tags.length > 0 && (
            <ul class="tags" aria-label="Tags">
              {m.tags.map((t) => (
                <li key={t}>
                  <a class="tag" href={`#/store?tag=${encodeURIComponent(t)}`}>
                    {t}
                  </a>
                </li>
              ))}
            </ul>
          )}
        </section>
        <section class="panel" aria-labelledby="facts">
          <h2 id="facts">Facts</h2>
          <Facts m={m} />
        </section>
      </div>
      {screenshots.length > 0 && (
        <section class="panel" aria-labelledby="shots">
          <h2 id="shots">Screenshots</h2>
          <div class="screenshots">
            {screenshots.map((src, i) => (
              <img key={src} src={src} alt={`${m.title}, screenshot ${i + 1}`} loading="lazy" />
            ))}
          </div>
        </section>
      )}
      <section class="panel" aria-labelledby="changes">
        <h2 id="changes">Changelog</h2>
        <Changelog manifestId={m.id} versions={recent} />
      </section>
      {installing && <InstallDialog manifestId={m.id} title={m.title} open onClose={() => setInstalling(false)} />}
    </div>
  );
}

export function StoreApp({ manifestId }) {
  const app = useAsync(() => get(`/catalog/${encodeURIComponent(manifestId)}`), [manifestId]);
  return (
    <Loaded state={app} what="Loading the app">
      {(m) => <StoreAppPage m={m} />}
    </Loaded>
  );
}
