import { useId, useState, type FormEvent } from "react";

// The only thing a signed-out page shows: no data and no data request until a key is given.
export function SignIn({ onSignIn, message }: { onSignIn: (key: string) => void; message?: string }) {
  const [key, setKey] = useState("");
  const id = useId();
  const submit = (e: FormEvent) => {
    e.preventDefault();
    const trimmed = key.trim();
    if (trimmed) onSignIn(trimmed);
  };
  return (
    <main className="signin">
      <h1>CESAR dashboard</h1>
      <form onSubmit={submit} aria-describedby={`${id}-help`}>
        <label htmlFor={`${id}-key`}>API key</label>
        <input id={`${id}-key`} name="apiKey" type="password" autoComplete="off" spellCheck={false}
               required value={key} onChange={(e) => setKey(e.target.value)} />
        <button type="submit">Sign in</button>
        <p id={`${id}-help`} className="muted">
          A key with the scope <code>agents:read</code> (create one with
          {" "}<code>uv run invoke keys.create</code>). It is kept in this tab&apos;s session
          storage only.
        </p>
        {message ? <p role="alert" className="error">{message}</p> : null}
      </form>
    </main>
  );
}
