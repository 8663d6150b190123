#!/usr/bin/env python3
"""Deterministic generator for the support-ticket triage example dataset.

Writes ``tickets.jsonl`` next to this file: 420 synthetic customer-support
tickets for a fictional SaaS product ("Brightloop"), each labelled with an
urgency (high / medium / low, 140 each) and a one-line reason, in OpenAI chat
JSONL format.

Standard library only. The output is byte-identical on every run: all
randomness comes from one ``random.Random(SEED)`` and nothing depends on the
clock, the environment or hash ordering.

    python examples/support_tickets/generate.py
"""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

SEED = 20240611
PER_LABEL = 140
MIN_WORDS, MAX_WORDS, MAX_CHARS = 12, 45, 280
OUT_PATH = Path(__file__).resolve().parent / "tickets.jsonl"

SYSTEM = (
    "Triage the support ticket. Answer with the urgency (high, medium or low) "
    "and a one-line reason."
)

# --------------------------------------------------------------------------
# Slot fillers. A slot is sampled once per ticket, so the same {slot} used in
# a ticket template and in its reason refers to the same value.
# --------------------------------------------------------------------------
POOLS: dict[str, list[str]] = {
    "App": ["The app", "Your platform", "Brightloop", "The web app", "Your service", "The whole site"],
    "app": ["the app", "your platform", "Brightloop", "the web app", "your service", "the site"],
    "feature": ["dashboard", "reports page", "search", "CSV export", "calendar view", "admin console",
                "audit log", "file uploads", "task board", "contacts list", "analytics tab"],
    "integration": ["Slack", "Salesforce", "Shopify", "HubSpot", "Zapier", "Jira", "Google Drive",
                    "QuickBooks", "Zendesk", "Microsoft Teams"],
    "region": ["the EU", "US-East", "APAC", "the UK", "Canada", "Australia"],
    "plan": ["Starter", "Team", "Business", "Enterprise", "Pro"],
    "staff": ["40", "65", "120", "300", "850", "2,000", "180", "500"],
    "code": ["500", "502", "503", "504"],
    "crm": ["Salesforce", "HubSpot", "Zendesk", "QuickBooks", "Pipedrive"],
    "chat": ["Slack", "Microsoft Teams"],
    "since": ["since about 9am", "for the last hour", "since early this morning", "for 40 minutes now",
              "since your maintenance window ended", "since around 2pm our time", "since the release last night"],
    "name": ["Priya", "Marcus", "Lena", "Tomas", "Aisha", "Ken", "Olga", "Sam", "Jordan", "Mei", "Rafael", "Ingrid"],
    "role": ["our accountant", "one of our sales reps", "a support agent", "our CFO", "a new hire",
             "our ops manager", "a contractor", "one of our designers"],
    "browser": ["Chrome", "Safari", "Firefox", "Edge"],
    "device": ["iPhone", "Android", "iPad"],
    "month": ["January", "February", "March", "April", "May", "June", "July", "August",
              "September", "October", "November", "December"],
    "country": ["Russia", "Brazil", "Vietnam", "Nigeria", "Romania", "an IP in the Netherlands"],
    "count": ["12", "38", "about 60", "over 200", "hundreds of", "roughly 1,500"],
    "pct": ["3", "5", "8", "10", "12", "15"],
    "delay": ["20-30 seconds", "almost a minute", "15 seconds", "40 seconds or so"],
    "late": ["30-40 minutes", "an hour or two", "about 20 minutes", "half a day"],
    "seats": ["25", "30", "45", "60", "110"],
    "fewer": ["18", "20", "35", "50", "90"],
    "row": ["212", "1,048", "77", "530", "3,119"],
    "size": ["10 MB", "25 MB", "50 MB"],
    "lang": ["German", "French", "Spanish", "Japanese", "Portuguese", "Dutch"],
    "chart": ["stacked bar charts", "funnel charts", "heatmaps", "cohort tables", "gantt charts"],
    "field": ["display name", "email address", "timezone", "profile photo", "job title", "language"],
    "when": ["today", "by end of day", "by 5pm today", "before midnight tonight", "this afternoon"],
    "invoice": ["INV-20418", "INV-31877", "INV-40026", "INV-18553", "INV-27391", "INV-36604"],
    "word": ["recieve", "seperate", "occured", "definately", "adress", "wich"],
}

OPENERS = {
    "any": ["Hi,", "Hello,", "Hi team,", "Hey,", "Hi support,", "Hello Brightloop team,", "Good morning,",
            "Hi there,", "Hey folks,", "Quick one:", "Hello support team,"],
    "high": ["URGENT:", "Help!", "Please help,", "This is critical.", "Emergency -", "We have a serious problem."],
    "medium": ["Not sure if this is known, but", "Reporting a bug:", "Small issue here.", "Hi, having trouble."],
    "low": ["Hope you're well!", "Quick question.", "Just wondering,", "Not urgent, but"],
}
CLOSERS = {
    "any": ["Thanks.", "Thanks!", "Thank you.", "Cheers.", "Please advise.", "Any help appreciated.",
            "Thanks in advance.", "Let me know."],
    "high": ["Please call me back right away.", "We need someone on this now.", "Please escalate immediately.",
             "This is costing us money every minute.", "What is going on??", "Completely unacceptable."],
    "medium": ["Can you take a look?", "Would appreciate a fix.", "Pretty annoying, to be honest.",
               "Please look into it when you can.", "Is this a known issue?"],
    "low": ["No rush.", "Whenever you get a chance.", "Thanks, love the product!", "Appreciate it.",
            "Not a big deal, just curious."],
}
CONTEXTS = [
    "We have {staff} users on the {plan} plan.",
    "We're on the {plan} plan.",
    "Our team is based in {region}.",
    "We have {seats} seats on {plan}.",
    "Account is on {plan}, hosted in {region}.",
    "We're a fairly new {plan} customer.",
    "I'm the admin for our {seats}-seat workspace.",
    "I look after Brightloop for our sales team.",
    "Our agency manages a few client workspaces with you.",
    "I only took over as account owner last month.",
]
# Context sentences may not reuse a slot the ticket itself already mentions
# (no "comparing Starter ... we're on Starter"), and head-counts never mix.
_NUMERIC = {"staff", "seats", "fewer"}


def slot_keys(template: str) -> set[str]:
    keys = set(re.findall(r"{(\w+)}", template))
    return keys | _NUMERIC if keys & _NUMERIC else keys


# First words that must keep their capital letter after "Hi," etc.
_KEEP_CAPS = {"I", "I'm", "Brightloop", "SSO", "API", "PDF", "CSV"}
for _k in ("name", "integration", "crm", "chat", "browser", "device", "lang", "plan"):
    _KEEP_CAPS.update(w.split()[0] for w in POOLS[_k])


def join_opener(opener: str, rest: str) -> str:
    """'Hi, the app...' rather than 'Hi, The app...'; 'Help! The app...'."""
    first = re.sub(r"[^\w']", "", rest.split(" ", 1)[0])
    if opener[-1] in ".!":
        rest = rest[0].upper() + rest[1:]
    elif (opener[-1] in ",-" or opener.endswith("but")) and first not in _KEEP_CAPS \
            and not first[1:2].isupper():
        rest = rest[0].lower() + rest[1:]
    return f"{opener} {rest}"


def is_lead_in(opener: str) -> bool:
    """Openers like 'Not urgent, but' must run straight into the ticket body."""
    return opener.endswith("but") or opener.startswith("Just wondering")


# --------------------------------------------------------------------------
# Scenarios: each has several ticket templates ("t") and reasons ("r").
# --------------------------------------------------------------------------
HIGH = [
    {"t": ["{App} is completely down for us. Every page returns a {code} error and none of our {staff} users can work.",
           "Nothing loads, just a {code} error on every page {since}. Our whole company is blocked.",
           "The entire workspace has been unreachable {since}. {staff} people are sitting idle."],
     "r": ["The whole service is down and no users can work.",
           "Complete outage is blocking every user in the company."]},
    {"t": ["Nobody in our org can log in {since}. SSO just loops back to the sign-in page for all {staff} staff.",
           "SSO login is broken for every single user {since}, the whole company is locked out.",
           "all of our users get kicked back to the login screen, nobody can get in at all"],
     "r": ["Login is broken for all users, so the company cannot work.",
           "Company-wide login outage has locked every user out."]},
    {"t": ["Every API call is failing with {code} {since}. Our production integration is completely dead.",
           "Your API is returning errors on 100% of requests {since}, our app is down for all our customers.",
           "API totally down for us. Our customer-facing product depends on it and is offline."],
     "r": ["API is failing for all requests, taking production down.",
           "Total API outage is breaking the customer's production product."]},
    {"t": ["Every checkout on our store is failing at the payment step. Customers can't pay at all and we're losing sales.",
           "Payments are failing for 100% of our customers {since}. Not a single order has gone through.",
           "No customer can complete a purchase, card payments all get declined by your gateway."],
     "r": ["Checkout is failing for every customer, so revenue is stopped.",
           "All payments are failing and no orders can be taken."]},
    {"t": ["Months of project records vanished overnight. Everything from {month} onward is just gone from our account.",
           "We logged in this morning and {count} customer records are missing. Nobody deleted them. Where is our data?",
           "our data is gone. the {feature} is empty and all history since {month} has disappeared"],
     "r": ["Large amount of customer data has been lost.",
           "Data loss across the account with records missing."]},
    {"t": ["After last night's sync, customer records are overwritten with other customers' details. Our CRM data is corrupted.",
           "The {crm} sync scrambled our data, contacts now have the wrong companies and emails attached.",
           "Thousands of records have been corrupted, phone numbers and addresses are swapped between contacts."],
     "r": ["Customer data is being corrupted across many records.",
           "Widespread data corruption makes the account data untrustworthy."]},
    {"t": ["We think our account was breached. There are admin logins from {country} that nobody here made, and user exports were downloaded.",
           "Security incident: someone from {country} logged in as an admin and exported our full contact list.",
           "Unknown person accessed our workspace and downloaded data. We believe we've been hacked."],
     "r": ["Possible breach with unauthorised admin access and data exported.",
           "Security incident: an attacker accessed and exported account data."]},
    {"t": ["One of our engineers pushed our production API key to a public GitHub repo. We need it revoked immediately.",
           "Our live API secret was leaked in a public post. Please help us rotate it and check for misuse.",
           "Production API key got leaked publicly about an hour ago, and we already see calls we didn't make."],
     "r": ["Leaked production API key is a live security risk.",
           "Exposed production credentials need revoking right away."]},
    {"t": ["Our admin account was taken over. The email and 2FA were changed and we are locked out of our own workspace.",
           "Someone hijacked our owner account, changed the password and is removing our users one by one.",
           "account takeover!! the attacker changed our admin email and now controls the whole workspace"],
     "r": ["Account takeover has given an attacker control of the workspace.",
           "Hijacked admin account is an active security incident."]},
    {"t": ["Our customers are seeing other customers' invoices in the portal. This is a serious data leak.",
           "Clients logging into our portal see someone else's account details and documents. Please shut this down.",
           "Private data is visible to the wrong people, users can open other companies' files."],
     "r": ["Private data is exposed to other customers, a serious leak.",
           "Cross-customer data exposure is a security and privacy incident."]},
    {"t": ["We must submit our audit log export to the regulator {when} and the export keeps failing. Missing it means fines.",
           "Compliance filing is due {when} and we cannot pull the audit log. Legal is panicking.",
           "Regulator deadline is {when}, audit log export errors out every time. We need this now."],
     "r": ["Regulatory deadline today is blocked by the failing export.",
           "Compliance filing due today cannot be completed."]},
    {"t": ["A GDPR erasure request legally expires {when} and the delete-user action errors out. We need this fixed.",
           "We have a legal data deletion deadline {when} and your delete function is broken.",
           "Our lawyer says we breach GDPR if this user isn't erased {when}, but deletion fails."],
     "r": ["Legal deletion deadline today is blocked by a failing feature.",
           "GDPR deadline today cannot be met because deletion fails."]},
    {"t": ["Your system is emailing our entire customer list over and over, {count} duplicates so far and it's still going.",
           "Our whole mailing list is being spammed by an automated email from our account that we can't stop.",
           "Every one of our customers just got the same notification ten times and it keeps sending."],
     "r": ["Runaway emails are spamming every customer and still ongoing.",
           "Ongoing mass email incident is hitting all of the customer's clients."]},
    {"t": ["No webhooks have fired {since}. Our order fulfilment is completely stopped, nothing is shipping.",
           "All webhook deliveries stopped {since}, and our entire warehouse pipeline is frozen.",
           "Webhooks are dead across every endpoint. Our production system depends on them and has ground to a halt."],
     "r": ["Webhook outage has stopped the customer's production operations.",
           "All webhooks are down, halting order fulfilment entirely."]},
    {"t": ["Since this morning's update the mobile app crashes on launch for all of our field staff. Nobody can clock in.",
           "The {device} app crashes instantly for every one of our {staff} drivers. Operations are stopped.",
           "Mobile app won't open for anyone in the company after the update, our crews can't work."],
     "r": ["Mobile app is unusable for all staff, stopping operations.",
           "App crashes for every field user so work has stopped."]},
    {"t": ["Everything hosted in {region} seems down. Our whole team there can't load a thing {since}.",
           "Region outage in {region}? None of our {staff} users there can access anything.",
           "All our {region} offices report the service is unreachable. Business there is at a standstill."],
     "r": ["Regional outage is blocking all users in that region.",
           "Service is down for every user in the affected region."]},
    {"t": ["We needed to restore after an incident and the backups for our workspace are empty. We can't recover our data.",
           "Your backup restore failed and wiped what was left. All our project data is gone.",
           "The restore point from last week is corrupted and we have no other copy of our data."],
     "r": ["Backups are unusable and account data cannot be recovered.",
           "Failed restore means permanent data loss for the account."]},
    {"t": ["Your billing integration charged all of our subscribers twice this morning. Hundreds of angry customers are calling.",
           "Every one of our customers was double-charged today through your payments module. We need this stopped now.",
           "All our recurring charges ran three times overnight. Our customers are furious and disputing payments."],
     "r": ["All customers were wrongly charged, causing widespread financial harm.",
           "Mass duplicate charges are hitting every customer right now."]},
    {"t": ["Someone uploaded malware through a shared link and it's being served to our customers from your file storage.",
           "A malicious file is being distributed from our public share links. Customers are downloading it right now.",
           "our shared folder is serving a virus to clients, we need the links disabled immediately"],
     "r": ["Malware is being served to customers, an active security incident.",
           "Active security incident with malicious files reaching customers."]},
    {"t": ["After the latest release every user in our workspace can see HR salary reports, including contractors.",
           "Permissions are broken: all {staff} employees can now open confidential payroll files.",
           "Role restrictions stopped working, interns can see board documents and everyone's salaries."],
     "r": ["Broken permissions expose confidential data to every user.",
           "Confidential data is exposed to all users in the workspace."]},
    {"t": ["Payouts to all our sellers failed today and the payout batch is stuck. Nobody has been paid.",
           "Payroll run failed for the whole company {since}. {staff} employees won't get paid.",
           "None of our vendors received their payments today, every transfer in the batch errored."],
     "r": ["Payments to everyone failed, so nobody is being paid.",
           "Failed payment run affects every recipient at once."]},
    {"t": ["The {crm} sync is deleting our records as it runs. We've already lost {count} deals.",
           "Your {crm} connector is wiping data on the other side. Every sync deletes more records.",
           "Something in the {crm} sync is mass-deleting our data right now. How do we stop it?"],
     "r": ["Integration is actively deleting data, causing ongoing data loss.",
           "Ongoing data deletion by the sync needs stopping immediately."]},
    {"t": ["Every page times out for all {staff} agents. Our support floor is at a complete standstill.",
           "Our whole call centre can't open customer records {since}. Nobody can help any caller.",
           "The app is so broken nobody on our team can do anything at all, every request times out."],
     "r": ["Service is unusable for every agent, so business has stopped.",
           "Total service failure has stopped the whole team's work."]},
    {"t": ["The SSL certificate on our custom portal domain expired. Every customer sees a security warning and can't log in.",
           "Our customer portal shows 'connection not secure' to everyone, certificate expired. Nobody can access it.",
           "Certificate error on our branded domain is blocking all of our customers from the portal."],
     "r": ["Expired certificate blocks all customers from the portal.",
           "Customer portal is inaccessible to everyone due to certificate error."]},
    {"t": ["Someone is using our account to send phishing emails to our customers. We need sending disabled now.",
           "Phishing emails are going out from our workspace to our whole client list. We didn't send them.",
           "Our customers are getting fake password-reset emails sent through our Brightloop account."],
     "r": ["Account is being used for phishing, an active security incident.",
           "Phishing sent from the account is harming all customers."]},
    {"t": ["You forced a password reset and the reset emails never arrive, so our entire company is locked out.",
           "Everyone was logged out by a forced reset and no reset links are being delivered. Nobody can work.",
           "all {staff} of us got logged out and no reset email ever arrives. the whole company is stuck"],
     "r": ["Entire company is locked out and cannot work.",
           "All users are locked out with no way back in."]},
    {"t": ["Quarterly VAT filing is due {when} and the tax report won't generate for any of our entities.",
           "Our tax return is due {when}, and the tax report page fails for every entity. We'll be fined.",
           "Need the tax report {when} for a legal filing and it errors for all entities."],
     "r": ["Legal tax filing due today is blocked by the failing report.",
           "Tax deadline today cannot be met, risking fines."]},
    {"t": ["The migration you ran last night wiped our workspace. All dashboards and {count} reports are gone.",
           "After the upgrade our entire workspace is empty, every project and file has disappeared.",
           "Workspace reset to blank after your maintenance. Years of data missing for our whole team."],
     "r": ["Migration wiped the workspace, causing major data loss.",
           "Entire workspace data is gone after the migration."]},
]

MEDIUM = [
    {"t": ["The {feature} throws an error when I filter by date. I can still get the numbers from an export, but it's annoying.",
           "Filtering the {feature} by date gives an error. Workaround is exporting the data, but please fix.",
           "date filter on the {feature} is broken, getting an error every time. exporting still works though"],
     "r": ["One feature is broken but a workaround exists.",
           "Date filter bug with a workable export workaround."]},
    {"t": ["The {feature} has been taking {delay} to load since Tuesday. It's usable, just really slow.",
           "Everything works but the {feature} is painfully slow lately, around {delay} per load.",
           "Why is the {feature} so slow? {delay} to open it. Still works, just slow."],
     "r": ["Slowness degrades the experience but work can continue.",
           "Performance degradation on one page, still usable."]},
    {"t": ["{name} on our team is locked out after too many attempts and the unlock email never arrived. Everyone else is fine.",
           "One user, {name}, can't log in since yesterday. The rest of the team has no problem.",
           "{role} got locked out of their account. Only them, nobody else is affected."],
     "r": ["Single user cannot log in but others are unaffected.",
           "One locked-out user; the rest of the team works normally."]},
    {"t": ["Our {month} invoice charges us for {seats} seats but we only have {fewer} active users. Please correct it.",
           "Invoice {invoice} looks wrong, we were billed for {seats} seats instead of {fewer}.",
           "we got overcharged on the {month} invoice, it shows {seats} seats. we have {fewer}"],
     "r": ["Invoice amount is wrong and needs correcting, no outage.",
           "Billing error on one invoice needs a correction."]},
    {"t": ["The {integration} integration fails once or twice a day. A manual resync fixes it, but it's a pain.",
           "{integration} sync keeps dropping intermittently. Hitting resync gets it going again.",
           "Our {integration} connection randomly disconnects every few days. We reconnect and it works again."],
     "r": ["Intermittent integration failure with a manual workaround.",
           "Integration fails occasionally but resyncing restores it."]},
    {"t": ["My CSV export of {count} contacts has been stuck on 'processing' for hours. Smaller exports work fine.",
           "Export has been spinning since this morning and never finishes. I need that file for a report on Friday.",
           "The export job is stuck at 90% for a large file. Small ones still come through."],
     "r": ["Large export is stuck, limited impact on other work.",
           "Stuck export job affects one task, not the whole account."]},
    {"t": ["Email notifications are arriving {late} late. Not critical, but our team keeps missing updates.",
           "Notifications are delayed by {late} since last week. We're checking the app manually for now.",
           "notification emails show up {late} after the event. still get them eventually"],
     "r": ["Delayed notifications are a degradation, not an outage.",
           "Notifications work but arrive late, limited impact."]},
    {"t": ["Search isn't finding tickets created in the last day or so. Browsing by folder still works.",
           "New records don't show up in search until the next day. We can find them manually in the list.",
           "Search results seem incomplete, recent items are missing. Filtering the list works as a workaround."],
     "r": ["Search is partly broken but items can be found another way.",
           "Search indexing lag with a manual workaround available."]},
    {"t": ["The {device} app crashes whenever I open the reports tab. Desktop works fine.",
           "Mobile app on {device} closes itself on the settings screen. Everything else in the app is OK.",
           "On {device}, the app freezes when uploading a photo. We use the website instead for now."],
     "r": ["Mobile crash on one screen; desktop is a workaround.",
           "One mobile screen crashes but other ways to work exist."]},
    {"t": ["The revenue report totals don't match the raw export, they're off by about {pct}%. Which one is right?",
           "Numbers in the {feature} and the export disagree by {pct}%. Can someone check the calculation?",
           "Report figures are off by roughly {pct}% compared to our own spreadsheet."],
     "r": ["Report numbers are inaccurate, a real bug with limited scope.",
           "Report numbers look wrong; a real bug but not an outage."]},
    {"t": ["Webhooks to one of our endpoints keep timing out. The other endpoints receive events fine.",
           "One webhook endpoint has been failing deliveries since Monday. Retries eventually get through.",
           "A single webhook subscription keeps failing with timeouts; the rest are OK."],
     "r": ["One webhook endpoint is failing while others still work.",
           "Partial webhook failure with retries eventually succeeding."]},
    {"t": ["Uploading PDFs larger than {size} fails with a generic error. Smaller files upload OK.",
           "File uploads over {size} just fail silently. We've been splitting files as a workaround.",
           "can't attach anything bigger than {size}, upload errors out. small files are fine"],
     "r": ["Large uploads fail but smaller files work as workaround.",
           "Upload size bug with a workaround, limited impact."]},
    {"t": ["SSO works for everyone except {name}, who gets an 'invalid assertion' error. She can use password login for now.",
           "One user gets an SSO error when signing in, everyone else is fine. Password login works for him.",
           "{name} keeps getting an SSO error page. Rest of the team logs in normally."],
     "r": ["SSO fails for one user, who has a password workaround.",
           "Single user SSO problem; other users are unaffected."]},
    {"t": ["We're getting 429 rate-limit errors on the API well below our plan's limit. Retries eventually succeed.",
           "API throttles us at around half our quota. Backoff works, but our sync takes twice as long.",
           "Seeing random 429s from the API even at low volume. Not blocking, but slowing our jobs."],
     "r": ["Unexpected rate limiting slows work but retries succeed.",
           "API throttling degrades throughput without stopping the integration."]},
    {"t": ["I was charged twice for our {month} subscription. Please refund the duplicate payment.",
           "Our card was charged two times for invoice {invoice}. Can you reverse one of them?",
           "Double charge on our account this month, please refund the extra one."],
     "r": ["Duplicate charge on one account needs a refund.",
           "Single billing error that needs correcting, business unaffected."]},
    {"t": ["Our weekly scheduled report didn't go out on Monday. I sent it manually for now.",
           "Scheduled reports stopped emailing last week. We're running them by hand in the meantime.",
           "The automatic Friday report never arrived, had to download it myself."],
     "r": ["Scheduled report failed, but it can be sent manually.",
           "Broken report schedule with a manual workaround."]},
    {"t": ["The calendar shows all our meetings an hour off since the daylight saving change.",
           "Times in the {feature} are shifted by one hour since the clocks changed. We're adjusting mentally.",
           "Due dates display an hour early for users in {region}. Annoying but we can live with it briefly."],
     "r": ["Timezone bug shows wrong times, a limited-impact defect.",
           "Display bug with times shifted, work can continue."]},
    {"t": ["{chat} notifications started going to the wrong channel. We moved them manually for now.",
           "Alerts from Brightloop land in a random {chat} channel instead of the one we configured.",
           "Our {chat} alerts post to an old archived channel since the update, can you check?"],
     "r": ["Integration posts to the wrong channel, a minor bug.",
           "Misrouted integration alerts; a manual workaround exists."]},
    {"t": ["A new teammate can't access the projects she was invited to. Re-inviting didn't help.",
           "{name} was added to our workspace but sees an empty project list. Others see everything.",
           "Permissions for {role} seem stuck, they can't open shared projects after being invited."],
     "r": ["One user lacks access; a permissions bug with limited scope.",
           "Single user permissions problem, the rest of the team works."]},
    {"t": ["{name} isn't getting 2FA codes by SMS anymore. She's using backup codes for now.",
           "SMS verification codes don't arrive for one of our users. Authenticator app works for him.",
           "2FA texts stopped arriving for {role}. Backup codes are getting them in for now."],
     "r": ["One user's 2FA SMS fails, with backup codes as workaround.",
           "Single user 2FA delivery issue that has a workaround."]},
    {"t": ["The pie chart widget on our dashboard shows 'no data' even though the table below has data.",
           "One chart on the {feature} is blank, the numbers are there in the table view.",
           "dashboard widget broken, shows nothing. the underlying table is fine"],
     "r": ["One dashboard widget is broken; data is still available.",
           "Widget display bug, data accessible through the table."]},
    {"t": ["CSV import fails on row {row} with no useful error. Splitting the file works but it's tedious.",
           "Importing our contacts stops at row {row}. We've been importing in smaller batches as a workaround.",
           "import keeps failing around row {row}, no error message. smaller files go through"],
     "r": ["Import bug with a tedious but working workaround.",
           "Import fails partway, but smaller batches still work."]},
    {"t": ["The editor doesn't save changes in {browser}. It works fine in another browser.",
           "Clicking Save in {browser} does nothing. Switching browsers works, but our team prefers {browser}.",
           "Only in {browser}: the form won't submit. Other browsers are fine."],
     "r": ["Browser-specific bug with an easy workaround.",
           "Save fails in one browser only; others work."]},
    {"t": ["A handful of Shopify orders each day don't sync over. We're adding them manually.",
           "About {pct}% of our orders never make it from Shopify into Brightloop. Most come through fine.",
           "Some store orders never show up after the sync, maybe a few a day."],
     "r": ["Some records fail to sync; most data still flows.",
           "Partial sync gaps that are being patched manually."]},
    {"t": ["We upgraded to {plan} yesterday but the new features still aren't unlocked.",
           "Paid for the {plan} upgrade but our account still shows the old plan limits.",
           "upgrade to {plan} went through on the card but the workspace didn't change"],
     "r": ["Plan upgrade not applied; existing features still work.",
           "Billing and plan mismatch needs fixing, limited impact."]},
    {"t": ["Our discount code wasn't applied to invoice {invoice}, so we were billed full price.",
           "The {pct}% annual discount we agreed on is missing from the {month} invoice.",
           "Promo discount didn't apply at renewal. Can you adjust the invoice?"],
     "r": ["Invoice amount is wrong due to missing discount.",
           "Billing error needs correcting, no service impact."]},
    {"t": ["The audit log is missing entries for the last two days. Everything else looks normal.",
           "Some actions aren't showing in the audit log, like user invites. We need it accurate for next month's review.",
           "Audit log has gaps since last week, a few events never got recorded."],
     "r": ["Audit log gaps are a real bug, not an emergency.",
           "Missing audit entries need fixing before the upcoming review."]},
    {"t": ["Generated invoice PDFs cut off the last line item. The web view shows it correctly.",
           "PDF export of quotes drops the footer and totals. We copy them from the web page for now.",
           "pdf download is missing the last page of the report, online version is complete"],
     "r": ["PDF output is incomplete, but the web view works.",
           "PDF rendering bug with the web view as workaround."]},
]

LOW = [
    {"t": ["How do I export my reports to CSV? I couldn't find it in the docs.",
           "Is there a way to download the {feature} data as a spreadsheet?",
           "where's the export button for reports? can't seem to find it"],
     "r": ["How-to question about exporting, nothing is broken.",
           "Usage question with no impact on current work."]},
    {"t": ["Any plans for a dark mode? Staring at the white {feature} all day is rough.",
           "Feature request: dark mode, please. Our night shift would love it.",
           "would be great to have a dark theme option at some point"],
     "r": ["Feature request with no impact on current work.",
           "Nice-to-have feature request, nothing is broken."]},
    {"t": ["The logo on the login page looks a bit blurry on retina screens.",
           "Small thing: the icons in the sidebar look pixelated on high-res monitors.",
           "The header font looks slightly off on the settings page, just cosmetic."],
     "r": ["Cosmetic issue only, everything still works fine.",
           "Minor visual glitch with no functional impact."]},
    {"t": ["Found a small typo in the API docs, '{word}' on the webhooks page.",
           "There's a spelling mistake in your help center article about {feature}: '{word}'.",
           "docs typo: '{word}' in the getting started guide. thought you'd want to know"],
     "r": ["Documentation typo, no impact on the service.",
           "Minor docs correction with nothing broken."]},
    {"t": ["Could you send me a copy of our {month} invoice? {role_cap} needs it for the books.",
           "Can I get a PDF of invoice {invoice}? I deleted the email by mistake.",
           "need a copy of last month's invoice for our records please"],
     "r": ["Request for an invoice copy, routine billing admin.",
           "Routine request for a document, nothing is broken."]},
    {"t": ["How do I change my {field}? I can't find it in settings.",
           "Where can I update the {field} on my profile?",
           "is it possible to change my {field} myself or do you have to do it?"],
     "r": ["Simple profile setting question, no problem to fix.",
           "Account setting how-to question with no impact."]},
    {"t": ["Just wanted to say the new {feature} is great. Our team loves it.",
           "No issue here, just feedback: the latest update made the {feature} much easier to use.",
           "Big fan of the recent changes, onboarding our new hires has been way smoother."],
     "r": ["Positive feedback from a happy customer, no action needed.",
           "General feedback with nothing broken or urgent."]},
    {"t": ["Would you consider adding a native {integration} integration? We'd use it every day.",
           "Feature request: integrate with {integration} so we don't have to copy things over.",
           "any chance of a {integration} integration on the roadmap?"],
     "r": ["Integration feature request, no current problem.",
           "Request for a new integration with no urgency."]},
    {"t": ["How do I add a new teammate to our workspace? Do they need their own seat?",
           "What's the best way to invite {role} with view-only access?",
           "Quick question on inviting people: can guests see all projects by default?"],
     "r": ["How-to question about inviting users, nothing is broken.",
           "Usage question about user management, nothing broken."]},
    {"t": ["We're thinking about setting up SSO with Okta. Is there a guide for that?",
           "Does the {plan} plan include SSO, and how would we configure it with Azure AD?",
           "What do we need to set up SAML login? Planning it for next quarter."],
     "r": ["Planning question about SSO setup, nothing is broken.",
           "Setup question for a future change, no impact now."]},
    {"t": ["What's the difference between the {plan} and Enterprise plans? Thinking of upgrading.",
           "Can you explain what's included in {plan}? Comparing options for next year.",
           "how much would it cost to add {seats} more seats on our plan?"],
     "r": ["Pricing question from a prospective upgrade, not a problem.",
           "Sales question about plans with no urgency."]},
    {"t": ["Are there keyboard shortcuts for the {feature}? Would speed things up a lot.",
           "Suggestion: add a shortcut to create a new task without using the mouse.",
           "it would be nice to have keyboard shortcuts, is that planned?"],
     "r": ["Feature suggestion with no impact on current work.",
           "Minor usability request, nothing is broken."]},
    {"t": ["The Save button on the billing page is slightly misaligned in {browser}. It still works.",
           "On {browser} the dropdown arrow overlaps the text in the {feature} filters. Just cosmetic.",
           "Minor layout glitch: the footer overlaps the last row on small screens."],
     "r": ["Cosmetic layout issue, functionality is unaffected.",
           "Minor visual bug that doesn't block anything."]},
    {"t": ["How do I change the billing email so invoices go to our finance inbox from next month?",
           "Can we add our VAT number to future invoices?",
           "Where do I update the company address printed on our invoices?"],
     "r": ["Routine billing settings question, nothing is wrong.",
           "Billing admin request with no urgency."]},
    {"t": ["How does pagination work on the API list endpoints? The docs only show the first page.",
           "Is there an API endpoint for the {feature}, or only the UI?",
           "what's the recommended way to fetch all records via the API? cursor or page numbers?"],
     "r": ["Developer how-to question, no failure reported.",
           "API usage question with no impact on production."]},
    {"t": ["Could you add {chart} to reports? We currently build them in a spreadsheet.",
           "Feature request: {chart} in the analytics tab would be really useful.",
           "would love {chart} as a report option someday"],
     "r": ["Reporting feature request, nothing is broken.",
           "Nice-to-have request with no effect on current work."]},
    {"t": ["Can I get notifications as a daily digest instead of one email per update?",
           "How do I turn off email notifications for comments but keep mentions?",
           "too many notification emails, where do I change how often I get them?"],
     "r": ["Notification settings question, nothing is broken.",
           "Preference how-to question with no impact."]},
    {"t": ["Is it possible to add custom fields to contacts? We'd like to track contract renewal dates.",
           "Feature request: let us create custom fields on tasks.",
           "custom fields on projects would be super handy for us, any plans?"],
     "r": ["Feature request for custom fields, no urgency.",
           "Enhancement request with nothing currently broken."]},
    {"t": ["The 'Learn more' link on the {feature} help panel goes to a 404 page.",
           "Broken link in your docs: the webhooks guide links to an old page.",
           "FYI the link to the API changelog in the footer is dead"],
     "r": ["Broken documentation link, no impact on the product.",
           "Docs link issue only, nothing functional affected."]},
    {"t": ["The {lang} translation of the settings page has a couple of awkward phrases.",
           "Small translation mistake in the {lang} UI, the Save button label is wrong.",
           "In {lang} the menu says 'Reports' twice, just a translation thing"],
     "r": ["Minor translation issue that is cosmetic only.",
           "Cosmetic translation error with no functional impact."]},
    {"t": ["How long do you keep deleted projects before they're purged? Asking for our retention policy.",
           "Where is our data stored, and do you have a data processing agreement we can review?",
           "Can you share your security whitepaper? Our IT team asked for it during vendor review."],
     "r": ["Informational question about policy, nothing is broken.",
           "General information request with no urgency."]},
    {"t": ["Do you offer training sessions for new admins? We're onboarding {role} next month.",
           "Are there any webinars or videos on getting the most out of the {feature}?",
           "is there a beginner tutorial we can share with new staff?"],
     "r": ["Request for training material, no problem to fix.",
           "Learning resources request with no impact."]},
    {"t": ["How do I remove an add-on at our next renewal? Don't want to cancel right now.",
           "We'd like to downgrade to {plan} when our contract renews. What's the process?",
           "how do i cancel the extra storage add-on for next billing cycle"],
     "r": ["Plan change question for the future, no urgency.",
           "Routine account change request, nothing broken."]},
    {"t": ["Suggestion for the mobile app: a larger font option would help our older staff.",
           "The {device} app text is a bit small. Any way to make it bigger?",
           "could the mobile app support landscape mode on {device}? just an idea"],
     "r": ["Mobile app suggestion, no functional problem.",
           "Usability suggestion with no impact on work."]},
    {"t": ["What are the API rate limits on the {plan} plan? Planning a new integration.",
           "Before we build our integration: how many requests per minute can we make?",
           "are webhook retries documented anywhere? designing our receiver now"],
     "r": ["Planning question about limits, nothing is failing.",
           "Developer planning question with no current issue."]},
    {"t": ["We rebranded. Can you update our company name on the account?",
           "How do I change the workspace name and logo to our new brand?",
           "our company changed its name, where do I update it in Brightloop?"],
     "r": ["Account admin change request, no urgency.",
           "Routine settings change with nothing broken."]},
    {"t": ["Your onboarding emails are a bit frequent, could we get fewer of them?",
           "Feedback: the in-app tips popups are distracting for experienced users. Can we turn them off?",
           "honestly the weekly product newsletter is too long, just my two cents"],
     "r": ["Feedback about communications, nothing urgent to fix.",
           "Minor feedback with no impact on the service."]},
    {"t": ["How do I connect {chat} so we get updates in a channel?",
           "Is there a guide for setting up the {integration} integration? First time doing it.",
           "what permissions does the {integration} app need when we install it?"],
     "r": ["How-to question about setting up an integration.",
           "Setup question with nothing currently broken."]},
]

LABELS = [("high", HIGH), ("medium", MEDIUM), ("low", LOW)]


class Slots(dict):
    """Lazily samples each slot once per ticket from POOLS."""

    def __init__(self, rng: random.Random):
        super().__init__()
        self.rng = rng

    def __missing__(self, key: str) -> str:
        if key == "role_cap":
            value = self["role"]
            value = value[0].upper() + value[1:]
        else:
            value = self.rng.choice(POOLS[key])
        self[key] = value
        return value


def add_typo(text: str, rng: random.Random) -> str:
    """Swap two adjacent inner letters of one longer word."""
    words = text.split(" ")
    idxs = [i for i, w in enumerate(words) if len(w) >= 6 and w.isalpha()]
    if not idxs:
        return text
    i = rng.choice(idxs)
    w = words[i]
    j = rng.randrange(1, len(w) - 2)
    words[i] = w[:j] + w[j + 1] + w[j] + w[j + 2:]
    return " ".join(words)


def roughen(text: str, rng: random.Random) -> str:
    """Apply occasional informal-writing noise."""
    if rng.random() < 0.12:
        text = add_typo(text, rng)
    if rng.random() < 0.06:
        text = re.sub(r"\bplease\b", "pls", text, flags=re.I)
        text = re.sub(r"\byou\b", "u", text)
    if rng.random() < 0.10:
        text = text.lower()
    if rng.random() < 0.08 and text.endswith("."):
        text = text[:-1]
    return text


def make_ticket(label: str, scenario: dict, rng: random.Random) -> tuple[str, str]:
    slots = Slots(rng)
    template = rng.choice(scenario["t"])
    core = template.format_map(slots)
    opener = None
    if rng.random() < 0.55:
        pool = OPENERS["any"] if rng.random() < 0.7 else OPENERS[label]
        opener = rng.choice(pool)
    parts = [core]
    if rng.random() < 0.35:
        used = slot_keys(template)
        options = [c for c in CONTEXTS if not slot_keys(c) & used]
        ctx = rng.choice(options).format_map(slots)
        before = rng.random() < 0.5 and not (opener and is_lead_in(opener))
        parts.insert(0 if before else 1, ctx)
    if rng.random() < 0.45:
        pool = CLOSERS["any"] if rng.random() < 0.5 else CLOSERS[label]
        if core.endswith("?"):
            pool = [c for c in pool if not c.endswith("?")]
        parts.append(rng.choice(pool))
    # Casual templates end without punctuation; add a full stop only when
    # another sentence follows.
    text = " ".join(p if i == len(parts) - 1 or p[-1] in ".!?:" else p + "."
                    for i, p in enumerate(parts))
    if opener:
        text = join_opener(opener, text)
    text = roughen(text, rng)
    reason = rng.choice(scenario["r"]).format_map(slots)
    return text, reason


def fits(text: str) -> bool:
    n = len(text.split())
    return MIN_WORDS <= n <= MAX_WORDS and len(text) <= MAX_CHARS


def check_reasons() -> None:
    for label, scenarios in LABELS:
        assert len(scenarios) >= 25, (label, len(scenarios))
        for sc in scenarios:
            for r in sc["r"]:
                n = len(r.split())
                assert 6 <= n <= 14 and "{" not in r, (label, r, n)


def generate() -> list[str]:
    check_reasons()
    rng = random.Random(SEED)
    seen: set[str] = set()
    rows: list[tuple[str, str, str]] = []
    for label, scenarios in LABELS:
        order = list(range(len(scenarios)))
        rng.shuffle(order)
        made, k = 0, 0
        while made < PER_LABEL:
            scenario = scenarios[order[k % len(order)]]
            k += 1
            for _ in range(200):
                text, reason = make_ticket(label, scenario, rng)
                if fits(text) and text.lower() not in seen:
                    break
            else:
                continue
            seen.add(text.lower())
            rows.append((label, text, reason))
            made += 1
    rng.shuffle(rows)
    lines = []
    for label, text, reason in rows:
        record = {"messages": [
            {"role": "system", "content": SYSTEM},
            {"role": "user", "content": text},
            {"role": "assistant", "content": f"urgency: {label}\nreason: {reason}"},
        ]}
        lines.append(json.dumps(record, ensure_ascii=False))
    return lines


def main() -> None:
    lines = generate()
    with open(OUT_PATH, "w", encoding="utf-8", newline="\n") as f:
        f.write("\n".join(lines) + "\n")
    print(f"wrote {len(lines)} examples to {OUT_PATH}")


if __name__ == "__main__":
    main()
