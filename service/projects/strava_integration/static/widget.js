/*
 * <strava-activity-feed>: the owner's public Strava activities as accessible cards.
 *
 *   <script src="https://api.example.com/api/strava-integration/widget.js" defer></script>
 *   <strava-activity-feed src="https://api.example.com/api/strava-integration" limit="5" sport-type="Run">
 *   </strava-activity-feed>
 *
 * No dependencies and no request but the API's own (feed and route images). Data from the API is only
 * ever inserted as text or as attribute values, never parsed as HTML. Theme it from the page with
 * --saf-accent, --saf-bg, --saf-fg, --saf-font and --saf-radius.
 */
(() => {
  "use strict";
  const TAG = "strava-activity-feed";
  if (customElements.get(TAG)) return; // the script may be included twice
  const FOOT_SPORTS = new Set(["Run", "TrailRun", "Walk", "Hike", "VirtualRun"]);
  const STRAVA = "https://www.strava.com/";
  const CSS = `
    :host { display: block; color: var(--saf-fg, #1f2328); font-family: var(--saf-font, inherit); }
    :host([hidden]) { display: none; }
    ul { list-style: none; margin: 0; padding: 0; display: grid; gap: 1rem;
         grid-template-columns: repeat(auto-fill, minmax(15rem, 1fr)); }
    article { background: var(--saf-bg, #fff); border: 1px solid color-mix(in srgb, currentColor 15%, transparent);
              border-radius: var(--saf-radius, 8px); padding: 1rem; height: 100%; box-sizing: border-box; }
    h3 { margin: 0 0 .25rem; font-size: 1.05rem; overflow-wrap: anywhere; }
    .meta, .credit, .state, .powered { margin: 0; font-size: .85rem; opacity: .8; }
    img { display: block; width: 100%; height: auto; margin: .75rem 0; }
    dl { display: grid; grid-template-columns: repeat(2, 1fr); gap: .5rem; margin: .75rem 0; }
    dt { font-size: .75rem; opacity: .7; } dd { margin: 0; font-weight: 600; }
    a { color: var(--saf-accent, #fc4c02); font-weight: 600; }
    .powered { margin-top: 1rem; text-align: end; }
  `;

  const number = (options) => new Intl.NumberFormat(undefined, options);
  const KM = number({ style: "unit", unit: "kilometer", maximumFractionDigits: 2 });
  const KMH = number({ style: "unit", unit: "kilometer-per-hour", maximumFractionDigits: 1 });
  const METERS = number({ style: "unit", unit: "meter", maximumFractionDigits: 0 });
  const DATE = new Intl.DateTimeFormat(undefined, { dateStyle: "medium", timeStyle: "short" });
  const isNumber = (value) => typeof value === "number" && Number.isFinite(value);

  /** An element with attributes and text content: the only way anything reaches the shadow DOM. */
  function h(tag, attributes = {}, text = null) {
    const node = document.createElement(tag);
    for (const [name, value] of Object.entries(attributes)) node.setAttribute(name, value);
    if (text !== null) node.textContent = String(text);
    return node;
  }

  function clock(seconds) {
    const s = Math.round(seconds);
    const hh = Math.floor(s / 3600), mm = Math.floor((s % 3600) / 60), ss = String(s % 60).padStart(2, "0");
    return hh ? `${hh}:${String(mm).padStart(2, "0")}:${ss}` : `${mm}:${ss}`;
  }

  /** [label, value] pairs for what the activity has; pace for foot sports, speed for the rest. */
  function figures(a) {
    const out = [];
    const km = isNumber(a.distance_m) ? a.distance_m / 1000 : null;
    const time = isNumber(a.moving_time_s) && a.moving_time_s > 0 ? a.moving_time_s : null;
    if (km !== null) out.push(["Distance", KM.format(km)]);
    if (time !== null) out.push(["Moving time", clock(time)]);
    if (km && time && FOOT_SPORTS.has(a.sport_type)) out.push(["Pace", `${clock(time / km)} /km`]);
    else if (km && time) out.push(["Speed", KMH.format(km / (time / 3600))]);
    if (isNumber(a.total_elevation_gain_m)) out.push(["Elevation gain", METERS.format(a.total_elevation_gain_m)]);
    return out;
  }

  function card(a, base) {
    const name = typeof a.name === "string" && a.name ? a.name : "Activity";
    const article = h("article", { part: "card" });
    article.append(h("h3", { part: "name" }, name));
    const when = a.start_date ? new Date(a.start_date) : null;
    const meta = h("p", { class: "meta" });
    if (when && !Number.isNaN(when.getTime())) meta.append(h("time", { datetime: a.start_date }, DATE.format(when)));
    if (typeof a.sport_type === "string") meta.append(`${meta.childNodes.length ? " · " : ""}${a.sport_type}`);
    article.append(meta);
    const route = typeof a.route_svg === "string" ? new URL(a.route_svg, base) : null;
    if (route && (route.protocol === "https:" || route.protocol === "http:")) {
      const img = h("img", { src: route.href, alt: `Route map of ${name}`, loading: "lazy", decoding: "async" });
      img.addEventListener("error", () => img.remove(), { once: true }); // no broken-image icon
      article.append(img);
    }
    const stats = h("dl");
    for (const [label, value] of figures(a)) {
      const row = h("div");
      row.append(h("dt", {}, label), h("dd", {}, value));
      stats.append(row);
    }
    if (stats.childNodes.length) article.append(stats);
    if (typeof a.strava_url === "string" && a.strava_url.startsWith(STRAVA)) {
      article.append(h("a", { href: a.strava_url, target: "_blank", rel: "noopener", part: "link" }, "View on Strava"));
    }
    if (typeof a.attribution === "string" && a.attribution) {
      article.append(h("p", { class: "credit" }, `Recorded with ${a.attribution}`));
    }
    const item = h("li");
    item.append(article);
    return item;
  }

  class StravaActivityFeed extends HTMLElement {
    static observedAttributes = ["src", "limit", "sport-type"];
    #root = this.attachShadow({ mode: "open" });
    #pending = false;
    #request = null;

    constructor() {
      super();
      const sheet = new CSSStyleSheet(); // adopted, so a page's strict CSP (no inline styles) still allows it
      sheet.replaceSync(CSS);
      this.#root.adoptedStyleSheets = [sheet];
    }

    connectedCallback() { this.#schedule(); }
    disconnectedCallback() { this.#request?.abort(); }
    attributeChangedCallback() { this.#schedule(); }

    /** Several attributes change at once (parsing, a framework): load once for all of them. */
    #schedule() {
      if (this.#pending) return;
      this.#pending = true;
      queueMicrotask(() => { this.#pending = false; if (this.isConnected) this.#load(); });
    }

    async #load() {
      this.#request?.abort();
      const request = this.#request = new AbortController();
      this.#state("Loading activities…", false);
      this.setAttribute("aria-busy", "true");
      try {
        const base = new URL(`${(this.getAttribute("src") || "").replace(/\/+$/, "")}/`, document.baseURI);
        const url = new URL("feed", base);
        const limit = this.getAttribute("limit"), sport = this.getAttribute("sport-type");
        if (limit) url.searchParams.set("limit", limit);
        if (sport) url.searchParams.set("sport_type", sport);
        // Default cache mode: the browser revalidates with the feed's ETag and honours its Cache-Control.
        const response = await fetch(url, { credentials: "omit", signal: request.signal });
        if (!response.ok) throw new Error(`feed answered ${response.status}`);
        const body = await response.json();
        if (request.signal.aborted) return;
        if (!body || !Array.isArray(body.activities)) throw new Error("feed without activities");
        this.#render(body.activities.filter((a) => a && typeof a === "object"), base);
      } catch (error) {
        if (request.signal.aborted) return; // a newer load replaced this one
        this.#state("Activities could not be loaded.", true);
      } finally {
        if (this.#request === request) this.removeAttribute("aria-busy");
      }
    }

    #state(message, failed) {
      const status = h("p", { class: failed ? "state error" : "state", role: "status", "aria-live": "polite" }, message);
      this.#root.replaceChildren(status);
    }

    #render(activities, base) {
      if (!activities.length) {
        this.#state("No activities yet.", false);
      } else {
        const list = h("ul", { role: "list", part: "list" });
        list.append(...activities.map((a) => card(a, base)));
        this.#root.replaceChildren(list);
      }
      const powered = h("p", { class: "powered" });
      powered.append(h("a", { href: STRAVA, target: "_blank", rel: "noopener" }, "Powered by Strava"));
      this.#root.append(powered);
    }
  }

  customElements.define(TAG, StravaActivityFeed);
})();
