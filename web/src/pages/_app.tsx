import "@/styles/globals.css";
import type { AppProps } from "next/app";
import Head from "next/head";
import { useCallback, useEffect, useState } from "react";
import { Layout } from "@/components/Layout";
import { SignIn } from "@/components/SignIn";
import { SIGNED_OUT } from "@/lib/api";
import { clearKey, getKey, setKey } from "@/lib/session";
import { LiveProvider } from "@/lib/useLive";

export default function App({ Component, pageProps }: AppProps) {
  // undefined until mounted: the static HTML never contains data nor a guess about the key.
  const [key, setKeyState] = useState<string | null | undefined>(undefined);
  const [message, setMessage] = useState<string | undefined>(undefined);

  useEffect(() => {
    setKeyState(getKey());
    const out = () => {
      setKeyState(null);
      setMessage("The API refused this key (unknown, revoked or expired). Sign in again.");
    };
    window.addEventListener(SIGNED_OUT, out);
    return () => window.removeEventListener(SIGNED_OUT, out);
  }, []);

  const signIn = useCallback((value: string) => {
    setKey(value);
    setMessage(undefined);
    setKeyState(value);
  }, []);
  const signOut = useCallback(() => {
    clearKey();
    setKeyState(null);
  }, []);
  const refused = useCallback(() => window.dispatchEvent(new Event(SIGNED_OUT)), []);

  return (
    <>
      <Head>
        <title>CESAR dashboard</title>
        <meta name="viewport" content="width=device-width, initial-scale=1" />
      </Head>
      {key === undefined ? null : key === null ? (
        <SignIn onSignIn={signIn} message={message} />
      ) : (
        <LiveProvider apiKey={key} onUnauthorized={() => { clearKey(); refused(); }}>
          <Layout onSignOut={signOut}>
            <Component {...pageProps} />
          </Layout>
        </LiveProvider>
      )}
    </>
  );
}
