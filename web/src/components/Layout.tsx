import Link from "next/link";
import { useRouter } from "next/router";
import type { ReactNode } from "react";
import { LiveStatus } from "./LiveStatus";
import { useLive } from "@/lib/useLive";

const NAV = [
  { href: "/", label: "Overview" },
  { href: "/agents/", label: "Agents" },
  { href: "/tasks/", label: "Tasks" },
  { href: "/runs/", label: "Runs" },
  { href: "/conflicts/", label: "Conflicts" },
];

export function Layout({ children, onSignOut }: { children: ReactNode; onSignOut: () => void }) {
  const { state } = useLive();
  const { pathname } = useRouter();
  return (
    <>
      <a className="skip" href="#main">Skip to content</a>
      <header className="top">
        <span className="brand">CESAR</span>
        <nav aria-label="Main">
          <ul>
            {NAV.map((item) => {
              const current = pathname === item.href.replace(/\/$/, "") || pathname === item.href;
              return (
                <li key={item.href}>
                  <Link href={item.href} aria-current={current ? "page" : undefined}>{item.label}</Link>
                </li>
              );
            })}
          </ul>
        </nav>
        <LiveStatus state={state} />
        <button type="button" className="link" onClick={onSignOut}>Sign out</button>
      </header>
      <main id="main" tabIndex={-1}>{children}</main>
    </>
  );
}
