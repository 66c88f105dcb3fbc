export function InstalledApps() { return <p>Being built.</p>; }
export function AppDetail() { return <p>Being built.</p>; }
