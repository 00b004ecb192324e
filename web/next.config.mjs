// A static export served under /ui/ by the API (development stack) or nginx (hosts): one origin
// with the API, so no CORS and no key in any URL.
/** @type {import('next').NextConfig} */
const nextConfig = {
  output: "export",
  basePath: "/ui",
  trailingSlash: true,
  reactStrictMode: true,
  images: { unoptimized: true },
  eslint: { ignoreDuringBuilds: true },
};

export default nextConfig;
