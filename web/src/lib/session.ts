// The API key lives in sessionStorage only: gone when the tab closes, never in a URL, a cookie
// or a log. Every read goes through here so tests can see what the page keeps.
const KEY = "cesar.apiKey";

export function getKey(): string | null {
  if (typeof window === "undefined") return null;
  try {
    return window.sessionStorage.getItem(KEY);
  } catch {
    return null; // storage disabled: behave as signed out
  }
}

export function setKey(key: string): void {
  window.sessionStorage.setItem(KEY, key);
}

export function clearKey(): void {
  window.sessionStorage.removeItem(KEY);
}
