// The typed API client: paths and bodies come from api-schema.ts, generated from the API's
// /openapi.json by openapi-typescript (tests/web/test_client.py fails when it drifts).
import createClient, { type Middleware } from "openapi-fetch";
import type { components, paths } from "./api-schema";
import { clearKey, getKey } from "./session";

export type Schemas = components["schemas"];

export const SIGNED_OUT = "cesar:signed-out";

const auth: Middleware = {
  onRequest({ request }) {
    const key = getKey();
    if (key === null) throw new Error("signed out: no request without a key");
    request.headers.set("Authorization", `Bearer ${key}`);
    return request;
  },
  onResponse({ response }) {
    if (response.status === 401) {
      clearKey();
      window.dispatchEvent(new Event(SIGNED_OUT));
    }
    return response;
  },
};

function origin(): string {
  return typeof window === "undefined" ? "http://localhost" : window.location.origin;
}

export const api = createClient<paths>({ baseUrl: origin() });
api.use(auth);

/** The `detail` of an error body, as one line for the page. */
export function errorText(error: unknown, status?: number): string {
  if (error && typeof error === "object" && "detail" in error) {
    const detail = (error as { detail: unknown }).detail;
    if (typeof detail === "string") return detail;
    if (Array.isArray(detail)) {
      return detail.map((d) => (d && typeof d === "object" && "msg" in d ? String(d.msg) : ""))
        .filter(Boolean).join("; ");
    }
  }
  return status ? `the API answered ${status}` : "the API did not answer";
}
