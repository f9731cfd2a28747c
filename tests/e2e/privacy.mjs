// The privacy centre end to end, in real headless Chromium (Debian's `chromium`), driven by
// playwright-core. Started by tests/it/privacy.rs (`a_borrower_uses_the_privacy_centre_in_chromium`),
// which runs a real vault on loopback, prepares the subject and passes, in the environment:
//
//   QOIMA_URL        the vault's base URL                 PRIVACY_LINK  a fresh session link
//   EXPIRED_LINK     a link whose session has expired     SUBJECT, OTHER_SUBJECT
//   SERVICE_TOKEN    a service caller's bearer token      CONTRACT      the open contract
//   LENDER_PORT      a free loopback port for the "lender's website" that embeds the page
//   SCREENSHOT_DIR   where each step's PNG goes            CHROMIUM      the browser binary
//
// Every step saves a screenshot. Any failed check exits non-zero with the step's name.

import assert from "node:assert/strict";
import { mkdtemp, rm, readFile, mkdir } from "node:fs/promises";
import { createServer } from "node:http";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { chromium } from "playwright-core";

const env = (name) => {
  const v = process.env[name];
  if (!v) throw new Error(`${name} is not set (this script is run by tests/it/privacy.rs)`);
  return v;
};
const VAULT = env("QOIMA_URL");
const LINK = env("PRIVACY_LINK");
const EXPIRED = env("EXPIRED_LINK");
const SUBJECT = env("SUBJECT");
const OTHER = env("OTHER_SUBJECT");
const SERVICE = env("SERVICE_TOKEN");
const CONTRACT = env("CONTRACT");
const LENDER_PORT = Number(env("LENDER_PORT"));
const SHOTS = env("SCREENSHOT_DIR");
const CHROMIUM = process.env.CHROMIUM || "/usr/bin/chromium";

await mkdir(SHOTS, { recursive: true });

let step = "start";
const log = (msg) => console.log(`[e2e] ${step}: ${msg}`);

/** The vault's API as the service caller. */
async function api(method, path, body) {
  const res = await fetch(`${VAULT}${path}`, {
    method,
    headers: { Authorization: `Bearer ${SERVICE}`, ...(body ? { "Content-Type": "application/json" } : {}) },
    body: body ? JSON.stringify(body) : undefined,
  });
  const text = await res.text();
  return { status: res.status, body: text ? JSON.parse(text) : null };
}

const with_lang = (link, lang) => `${link}${link.includes("?") ? "&" : "?"}lang=${lang}`;

// The lender's website: one page that embeds the privacy centre in an iframe.
const lender = createServer((req, res) => {
  res.writeHead(200, { "Content-Type": "text/html; charset=utf-8" });
  res.end(`<!doctype html><html lang="en"><head><meta charset="utf-8"><title>Lender</title></head>
<body style="font-family: sans-serif; margin: 0; background: #223">
<p style="color: #fff; padding: 8px 16px; margin: 0">100tenge.kz — your account</p>
<iframe src="${with_lang(LINK, "en")}" title="Privacy centre" style="border: 0; width: 100%; height: 1400px; background: #fff"></iframe>
</body></html>`);
});
await new Promise((ok) => lender.listen(LENDER_PORT, "127.0.0.1", ok));

// Chromium with a fresh profile and everything that would reach out to the network off
// (the machine has no network but loopback).
const profile = await mkdtemp(join(tmpdir(), "qoima-e2e-profile-"));
const context = await chromium.launchPersistentContext(profile, {
  executablePath: CHROMIUM,
  headless: true,
  args: [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
  ],
  viewport: { width: 1024, height: 900 },
  // A borrower's browser in Kazakh: Accept-Language picks the page's language.
  locale: "kk-KZ",
  acceptDownloads: true,
});

const problems = [];
function watch(page) {
  // A script that ran from a value would open a dialog; a CSP violation logs an error.
  page.on("dialog", async (d) => {
    problems.push(`dialog opened (${d.type()}): ${d.message()}`);
    await d.dismiss();
  });
  page.on("pageerror", (e) => problems.push(`page error: ${e.message}`));
  page.on("console", (m) => {
    if (m.type() === "error" && /Content Security Policy|Refused to/i.test(m.text())) problems.push(`console: ${m.text()}`);
  });
  return page;
}

async function shot(page, name, opts = {}) {
  const path = join(SHOTS, `${name}.png`);
  await page.screenshot({ path, fullPage: true, ...opts });
  log(`screenshot ${path}`);
}

let exitCode = 0;
try {
  const page = watch(context.pages()[0] || (await context.newPage()));

  step = "01 open the link";
  // The language comes from the browser's Accept-Language (kk-KZ).
  let res = await page.goto(LINK);
  assert.equal(res.status(), 200);
  assert.equal(await page.locator("html").getAttribute("lang"), "kk");
  await page.getByRole("heading", { level: 1, name: "Құпиялылық орталығы", exact: true }).waitFor();
  const headers = res.headers();
  assert.match(headers["content-security-policy"], /^default-src 'none'; style-src 'self'; script-src 'self';/);
  assert.equal(headers["referrer-policy"], "same-origin");
  assert.equal(headers["cache-control"], "no-store");
  await shot(page, "01-page-kk");

  step = "02 see the data";
  await page.getByRole("link", { name: "English" }).click();
  await page.getByRole("heading", { level: 1, name: "Privacy centre", exact: true }).waitFor();
  assert.equal(await page.locator("html").getAttribute("lang"), "en");
  for (const h of ["Your data", "Consents", "Contracts", "Disclosures to third parties", "Who used your data", "Erase your data"]) {
    await page.getByRole("heading", { level: 2, name: h, exact: true }).waitFor();
  }
  await page.getByText("Aigerim E2E").first().waitFor();
  // A value holding markup shows as text and runs nothing.
  await page.getByText("<script>alert(1)</script>").waitFor();
  assert.equal(await page.locator("script:not([src])").count(), 0);
  const consent = page.locator('li[data-purpose="advertising"]');
  await consent.getByText("In force").waitFor();
  await consent.getByText("2019-01-29").waitFor();
  await page.locator(`li[data-contract="${CONTRACT}"]`).getByText("Holds erasure until it is settled").waitFor();
  await page.locator("#disclosures").getByText("First Credit Bureau").waitFor();
  await page.locator("#disclosures").getByText("Required by law").waitFor();
  await page.locator("#access").getByText("Issuing a loan").waitFor();
  await page.locator("#erasure .panel.hold").getByText(CONTRACT).waitFor();
  await shot(page, "02-page-en");

  step = "03 the same page on a phone (390×844, and 360 px)";
  const phone = watch(await context.newPage());
  await phone.setViewportSize({ width: 390, height: 844 });
  await phone.goto(with_lang(LINK, "ru"));
  await phone.getByRole("heading", { level: 1, name: "Центр конфиденциальности", exact: true }).waitFor();
  const overflow = await phone.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
  assert.ok(overflow <= 0, `the page is ${overflow}px wider than the phone`);
  await shot(phone, "03-phone-ru", { fullPage: false });
  await shot(phone, "03-phone-ru-full");
  // The narrowest phones in use: 360 px, in Kazakh (the longest words).
  await phone.setViewportSize({ width: 360, height: 740 });
  await phone.goto(with_lang(LINK, "kk"));
  const narrow = await phone.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
  assert.ok(narrow <= 0, `at 360 px the page is ${narrow}px too wide`);
  await phone.close();

  step = "04 correct a field";
  const phoneRow = page.locator('details:has(input[name="field"][value="identity.phone"])');
  await phoneRow.locator("summary").click();
  await phoneRow.getByLabel("New value").fill("+77019876543");
  await phoneRow.getByRole("button", { name: "Save correction" }).click();
  await page.getByRole("status").getByText("Your correction of “Phone” was saved.").waitFor();
  await page.getByText("+77019876543").first().waitFor();
  await shot(page, "04-rectified");

  step = "05 download my data";
  const [download] = await Promise.all([page.waitForEvent("download"), page.getByRole("link", { name: "Download (JSON)" }).click()]);
  const exported = JSON.parse(await readFile(await download.path(), "utf8"));
  assert.equal(exported.subject, SUBJECT);
  assert.equal(exported.fields["identity.phone"], "+77019876543");
  assert.equal(exported.consents[0].policy_version, "2019-01-29");
  log(`downloaded ${download.suggestedFilename()}`);

  step = "06 withdraw consent, from the page embedded in the lender's website";
  let read = await api("GET", `/v1/subjects/${SUBJECT}?purpose=advertising`);
  assert.equal(read.status, 200, "advertising may read while the consent holds");
  const lenderPage = watch(await context.newPage());
  await lenderPage.goto(`http://127.0.0.1:${LENDER_PORT}/`);
  const frame = lenderPage.frameLocator("iframe");
  await frame.getByRole("heading", { level: 1, name: "Privacy centre", exact: true }).waitFor();
  await shot(lenderPage, "05-embedded", { fullPage: false });
  await frame.locator('li[data-purpose="advertising"]').getByRole("button", { name: /Withdraw consent/ }).click();
  await frame.getByRole("status").getByText("Your consent for “Advertising offers” was withdrawn.").waitFor();
  await frame.locator('li[data-purpose="advertising"]').getByText("Withdrawn").first().waitFor();
  await shot(lenderPage, "06-consent-withdrawn-embedded", { fullPage: false });
  await lenderPage.close();
  read = await api("GET", `/v1/subjects/${SUBJECT}?purpose=advertising`);
  assert.equal(read.status, 403, "the next advertising read is denied");
  assert.equal(read.body.type, "urn:qoima:problem:basis-missing");
  await page.reload();
  await page.locator('li[data-purpose="advertising"]').getByText("Withdrawn").first().waitFor();
  await shot(page, "06-consent-withdrawn");

  step = "07 request erasure under an open contract";
  const erase = page.getByRole("button", { name: "Erase my data" });
  await erase.click(); // the confirmation box is required: nothing is sent
  assert.equal(await page.locator("#erasure .panel.pending").count(), 0);
  await page.getByLabel("I understand that my data will be destroyed for good.").check();
  await erase.click();
  await page.getByRole("status").getByText("Your erasure request was recorded.").waitFor();
  const pending = page.locator("#erasure .panel.pending");
  await pending.getByRole("heading", { name: "Erasure requested", exact: true }).waitFor();
  await pending.getByText(CONTRACT).waitFor();
  await pending.getByText(/^rcpt_/).waitFor();
  const receipt = (await pending.locator("code").textContent()).trim();
  await page.locator("#erasure").scrollIntoViewIfNeeded();
  await shot(page, "07-erasure-pending");

  step = "08 settle the contract through the API";
  const settled = await api("PATCH", `/v1/subjects/${SUBJECT}/contracts/${CONTRACT}`, { status: "settled" });
  assert.equal(settled.status, 200);
  assert.equal(settled.body.erasure.status, "erased");
  assert.equal(settled.body.erasure.receipt, receipt);

  step = "09 see the erased state";
  await page.reload();
  await page.getByRole("heading", { level: 2, name: "Your data has been erased", exact: true }).waitFor();
  assert.equal((await page.locator("#receipt").textContent()).trim(), receipt);
  assert.equal(await page.getByText("Aigerim E2E").count(), 0, "no data left on the page");
  assert.equal(await page.locator("form").count(), 0);
  await shot(page, "09-erased");
  const gone = await api("GET", `/v1/subjects/${SUBJECT}?purpose=loan_issuance`);
  assert.equal(gone.status, 410);

  step = "10 an expired link is refused";
  res = await page.goto(with_lang(EXPIRED, "en"));
  assert.equal(res.status(), 403);
  await page.getByText("The link has expired").waitFor();
  assert.equal(await page.locator("form").count(), 0);
  await shot(page, "10-expired");

  step = "11 a tampered link (another subject, same signature) is refused";
  const url = new URL(LINK);
  const token = url.pathname.split("/").pop();
  const [payload, tag] = token.split(".");
  const claims = JSON.parse(Buffer.from(payload, "base64url").toString("utf8"));
  assert.equal(claims.subject, SUBJECT);
  claims.subject = OTHER;
  const forged = `${Buffer.from(JSON.stringify(claims)).toString("base64url")}.${tag}`;
  res = await page.goto(`${VAULT}/privacy/s/${forged}?lang=en`);
  assert.equal(res.status(), 403);
  await page.getByText("The link is not valid.").waitFor();
  assert.equal(await page.getByText(OTHER).count(), 0);
  await shot(page, "11-tampered");

  step = "checks across steps";
  assert.deepEqual(problems, [], "no script ran from data and the CSP refused nothing the page needs");
  console.log("[e2e] all steps passed");
} catch (e) {
  console.error(`[e2e] FAILED at step "${step}": ${e.stack || e}`);
  if (problems.length) console.error(`[e2e] also seen: ${problems.join("; ")}`);
  try {
    const pages = context.pages();
    if (pages.length) await pages[pages.length - 1].screenshot({ path: join(SHOTS, "failure.png"), fullPage: true });
  } catch {}
  exitCode = 1;
} finally {
  await context.close();
  lender.close();
  await rm(profile, { recursive: true, force: true });
}
process.exit(exitCode);
