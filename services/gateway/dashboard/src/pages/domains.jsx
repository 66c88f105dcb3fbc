export function Domains() { return <p>Being built.</p>; }
