export function Store() { return <p>Being built.</p>; }
export function StoreApp() { return <p>Being built.</p>; }
