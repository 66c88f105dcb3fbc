// Adding a domain: its DNS provider and the provider's settings; Homeport checks them before
// it keeps them (the API answers which field is wrong). Used by the setup wizard and Domains.
import { post } from "../api.js";
import { Field, FormError, Submit, useForm } from "../ui/form.jsx";

const KINDS = {
  powerdns: {
    label: "PowerDNS (HTTP API)",
    fields: [
      ["api_url", "API address", "text", "e.g. http://127.0.0.1:8081"],
      ["api_key", "API key", "password", "kept encrypted, never shown again"],
      ["server_id", "Server id", "text", "usually localhost"],
    ],
  },
  route53: {
    label: "Amazon Route 53",
    fields: [
      ["access_key_id", "Access key id", "text", "an IAM key that may change this hosted zone"],
      ["secret_access_key", "Secret access key", "password", "kept encrypted, never shown again"],
      ["hosted_zone_id", "Hosted zone id", "text", "e.g. Z0123456789ABCDEFGHIJ"],
      ["region", "Region", "text", "default us-east-1"],
    ],
  },
  manual: { label: "I keep the DNS records myself", fields: [] },
  wildcard: { label: "*.<domain> already points at this server", fields: [] },
};

const ALL = ["api_url", "api_key", "server_id", "access_key_id", "secret_access_key", "hosted_zone_id", "region"];

export function DomainForm({ onAdded, submitLabel = "Add and verify" }) {
  const initial = { domain: "", kind: "powerdns", zone: "", nameservers: "", server_ipv4: "", server_ipv6: "" };
  for (const f of ALL) initial[f] = "";
  const form = useForm(initial);
  const { values } = form;
  const kind = KINDS[values.kind] || KINDS.manual;

  const save = form.submit(async (v) => {
    const provider = { kind: v.kind };
    for (const [name] of kind.fields) if (v[name].trim()) provider[name] = v[name].trim();
    if (v.zone.trim()) provider.zone = v.zone.trim();
    const ns = v.nameservers.split(/[\s,]+/).filter(Boolean);
    if (ns.length) provider.nameservers = ns;
    const body = { domain: v.domain.trim().toLowerCase(), provider };
    if (v.server_ipv4.trim()) body.server_ipv4 = v.server_ipv4.trim();
    if (v.server_ipv6.trim()) body.server_ipv6 = v.server_ipv6.trim();
    const added = await post("/domains", body);
    onAdded(added);
  });

  // A provider Homeport writes records to needs the address to point names at: shown up front.
  const manages = kind.fields.length > 0;
  const ipv4 = (
    <Field label="This server's IPv4 address" {...form.bind("server_ipv4")} hint="Homeport points my.<domain> and each app's name here (A records). Leave empty to keep those records yourself." />
  );
  return (
    <form onSubmit={save} noValidate>
      <FormError error={form.errors._form} />
      <Field label="Domain" {...form.bind("domain")} placeholder="example.com" autocomplete="off" hint="Apps live at <name>.<domain>, the dashboard at my.<domain>." />
      <Field label="DNS provider" type="select" {...form.bind("kind")}>
        {Object.entries(KINDS).map(([k, d]) => (
          <option key={k} value={k}>
            {d.label}
          </option>
        ))}
      </Field>
      {kind.fields.map(([name, label, type, hint]) => (
        <Field key={name} label={label} type={type} {...form.bind(name)} hint={hint} autocomplete="off" />
      ))}
      {manages && ipv4}
      <details class="more">
        <summary>More settings</summary>
        <div class="more-fields">
          <Field label="Zone" {...form.bind("zone")} hint="Default: the domain itself" />
          <Field label="Name servers to check" {...form.bind("nameservers")} hint="host:port, separated by spaces. Default: the zone's NS records" />
          {!manages && ipv4}
          <Field label="This server's IPv6 address" {...form.bind("server_ipv6")} hint="The same with AAAA records, if this server has a public IPv6 address." />
        </div>
      </details>
      <Submit busy={form.busy}>{submitLabel}</Submit>
    </form>
  );
}
