// The dashboard: boot (setup needed? signed in?), the shell with its navigation, the pages.
import "./styles.css";
import { render } from "preact";
import { useCallback, useEffect, useState } from "preact/hooks";
import { del, get, setUnauthorizedHandler } from "./api.js";
import { navigate, useRoute } from "./router.js";
import { Session } from "./session.js";
import { Loading } from "./ui/common.jsx";
import { Setup } from "./pages/setup.jsx";
import { Login, AcceptInvitation, ResetPassword } from "./pages/login.jsx";
import { InstalledApps, AppDetail } from "./pages/apps.jsx";
import { Store, StoreApp } from "./pages/store.jsx";
import { Users } from "./pages/users.jsx";
import { Groups } from "./pages/groups.jsx";
import { Domains } from "./pages/domains.jsx";
import { Email } from "./pages/mail.jsx";
import { Firewall } from "./pages/firewall.jsx";
import { Backups } from "./pages/backups.jsx";
import { Activity } from "./pages/activity.jsx";
import { Bell, Notifications } from "./pages/notifications.jsx";
import { Graphs } from "./pages/graphs.jsx";
import { System } from "./pages/system.jsx";
import { Profile } from "./pages/profile.jsx";
import { EnrolTotp } from "./pages/enrol.jsx";

const NAV = [
  { path: "/apps", label: "Apps" },
  { path: "/store", label: "App store" },
  { path: "/users", label: "Users", admin: true },
  { path: "/groups", label: "Groups", admin: true },
  { path: "/domains", label: "Domains", admin: true },
  { path: "/mail", label: "Email", admin: true },
  { path: "/firewall", label: "Firewall", admin: true },
  { path: "/backups", label: "Backups", admin: true },
  { path: "/activity", label: "Activity", admin: true },
  { path: "/graphs", label: "Graphs", admin: true },
  { path: "/system", label: "System", admin: true },
];

// Pages anyone may open without a session.
const PUBLIC = { login: Login, invite: AcceptInvitation, reset: ResetPassword };

function page(parts, me) {
  const [first, second] = parts;
  const admin = me.is_admin;
  switch (first) {
    case "apps":
      return second ? <AppDetail appId={second} /> : <InstalledApps />;
    case "store":
      return second ? <StoreApp manifestId={second} /> : <Store />;
    case "profile":
      return <Profile />;
    case "users":
      return admin ? <Users /> : null;
    case "groups":
      return admin ? <Groups /> : null;
    case "domains":
      return admin ? <Domains /> : null;
    case "mail":
      return admin ? <Email /> : null;
    case "firewall":
      return admin ? <Firewall /> : null;
    case "backups":
      return admin ? <Backups /> : null;
    case "activity":
      return admin ? <Activity /> : null;
    case "notifications":
      return admin ? <Notifications /> : null;
    case "graphs":
      return admin ? <Graphs /> : null;
    case "system":
      return admin ? <System /> : null;
    default:
      return null;
  }
}

function Shell({ me, route, signOut }) {
  const [menu, setMenu] = useState(false);
  const here = `/${route.parts[0] || ""}`;
  const content = page(route.parts, me);
  useEffect(() => setMenu(false), [route.path]);
  useEffect(() => {
    if (content === null) navigate("/apps", { replace: true });
  }, [route.path]);
  return (
    <div class="shell">
      <a class="skip" href="#main" onClick={(e) => { e.preventDefault(); document.getElementById("main").focus(); }}>
        Skip to content
      </a>
      <header class="topbar">
        <a class="brand" href="#/apps">
          <img src="/assets/favicon.svg" alt="" width="24" height="24" /> Homeport
        </a>
        {me.is_admin && <Bell path={route.path} />}
        <button type="button" class="btn btn-icon menu-toggle" aria-expanded={menu ? "true" : "false"} aria-controls="nav" onClick={() => setMenu(!menu)}>
          <span aria-hidden="true">☰</span>
          <span class="sr-only">Menu</span>
        </button>
        <nav id="nav" class={menu ? "nav open" : "nav"} aria-label="Main">
          <ul>
            {NAV.filter((n) => !n.admin || me.is_admin).map((n) => (
              <li key={n.path}>
                <a href={`#${n.path}`} aria-current={here === n.path ? "page" : undefined}>
                  {n.label}
                </a>
              </li>
            ))}
          </ul>
          <div class="nav-user">
            <a href="#/profile" aria-current={here === "/profile" ? "page" : undefined}>
              {me.display_name || me.username}
            </a>
            <button type="button" class="btn btn-ghost" onClick={signOut}>
              Sign out
            </button>
          </div>
        </nav>
      </header>
      <main id="main" tabIndex={-1}>
        {content || <Loading />}
      </main>
    </div>
  );
}

function App() {
  const route = useRoute();
  const [boot, setBoot] = useState({ state: "loading" });

  const refresh = useCallback(async () => {
    try {
      const status = await get("/status");
      if (status.setup_done === false) {
        setBoot({ state: "setup" });
        return;
      }
    } catch (e) {
      setBoot({ state: "down", error: e });
      return;
    }
    try {
      const me = await get("/profile", { quiet401: true });
      setBoot({ state: "in", me });
    } catch (e) {
      if (e.status === 401) setBoot({ state: "out" });
      else if (e.status === 403 && /second factor/.test(e.message)) setBoot({ state: "enrol" });
      else setBoot({ state: "down", error: e });
    }
  }, []);

  const signOut = useCallback(async () => {
    try {
      await del("/session", { quiet401: true });
    } catch (_) {
      /* already signed out */
    }
    setBoot({ state: "out" });
    navigate("/login");
  }, []);

  useEffect(() => {
    setUnauthorizedHandler(() => setBoot((b) => (b.state === "in" ? { state: "out", expired: true } : b)));
    refresh();
  }, []);

  const ctx = { me: boot.me || null, refresh, signOut };
  const first = route.parts[0];
  let body;
  if (boot.state === "loading") body = <Loading what="Connecting to Homeport" />;
  else if (boot.state === "down")
    body = (
      <div class="centered">
        <h1>Homeport is not answering</h1>
        <p role="alert">{boot.error.message}</p>
        <button type="button" class="btn btn-primary" onClick={refresh}>
          Try again
        </button>
      </div>
    );
  else if (boot.state === "setup" || (first === "setup" && boot.state !== "in")) body = <Setup />;
  else if (PUBLIC[first] && boot.state !== "in") {
    const Public = PUBLIC[first];
    body = <Public token={route.parts[1]} expired={boot.expired} />;
  } else if (boot.state === "out") body = <Login expired={boot.expired} />;
  else if (boot.state === "enrol") body = <EnrolTotp />;
  else if (first === "setup") body = <Setup signedIn />;
  else body = <Shell me={boot.me} route={route} signOut={signOut} />;
  return <Session.Provider value={ctx}>{body}</Session.Provider>;
}

render(<App />, document.getElementById("root"));
