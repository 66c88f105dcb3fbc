-- What the packet filter is made from, derived from events (services/firewall/rules.py): the
-- administrators' lists, apps' published ports, networks and addons, mail domains.
CREATE TABLE firewall.allowlists (
    scope     text PRIMARY KEY,            -- ssh | dashboard | app:<app id>
    cidrs     text[] NOT NULL,             -- in force; empty: everyone
    why       text NOT NULL,               -- set | trial | confirmed | reverted
    trial_id  uuid,
    deadline  timestamptz,                 -- a trial's end unless confirmed
    previous  text[]                       -- a trial's list before it
);

CREATE TABLE firewall.blocklist (
    entry  cidr PRIMARY KEY
);

-- An import's parts until its last one arrives (then it replaces or extends the list).
CREATE TABLE firewall.blocklist_staged (
    upload_id  uuid NOT NULL,
    entry      cidr NOT NULL,
    PRIMARY KEY (upload_id, entry)
);

CREATE TABLE firewall.apps (
    app_id     uuid PRIMARY KEY,
    subnet     cidr,                       -- its Docker network
    addons     text[] NOT NULL DEFAULT '{}',
    tcp_ports  integer[] NOT NULL DEFAULT '{}',   -- host ports in force
    udp_ports  integer[] NOT NULL DEFAULT '{}',
    next_tcp   integer[],                  -- a configure's new ports until it ends
    next_udp   integer[],
    running    boolean NOT NULL DEFAULT true,
    present    boolean NOT NULL DEFAULT false,    -- installed (not uninstalling or gone)
    internet   boolean NOT NULL DEFAULT true
);

CREATE TABLE firewall.mail_domains (
    domain  text PRIMARY KEY
);

-- The last version of each of the firewall's own streams applied: its commands apply their
-- events in their own transaction (append_inline), the projection's runner then skips them.
CREATE TABLE firewall.applied (
    stream   text PRIMARY KEY,
    version  integer NOT NULL
);

-- Bumped by every change of the above: the enforcer renders the table again when it moves.
CREATE TABLE firewall.revision (
    id  integer PRIMARY KEY CHECK (id = 1),
    n   bigint NOT NULL
);
INSERT INTO firewall.revision VALUES (1, 0);
