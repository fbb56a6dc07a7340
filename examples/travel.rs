//! A trip booking saga over four services, with parallel branches joined by one step.
//!
//! ```text
//! trips: TripRequested -+-> flights: FlightBooked -+-> payments (join): PaymentCharged -> trips: TripConfirmed (terminal)
//!                       +-> hotels:  HotelBooked  -+                  or InvoiceIssued (terminal)
//! ```
//!
//! Flights and hotels book in parallel as soon as the trip is requested; payments waits for
//! both bookings (a join) and then has two outcomes: it charges the card the trip started
//! with (`PaymentCharged`, which trips confirms) or, for a business trip, issues an invoice
//! (`InvoiceIssued`, which ends the saga itself). The card token and the company account
//! travel as saga data: no event copies them for payments' sake, and neither does any copy the
//! traveller's budget for trips'.
//!
//! The saga compensates in reverse order (docs/concepts.md, rule 5): the last step is undone
//! first. One run plays four trips and prints each one's timeline: one is confirmed, one is
//! invoiced, one finds no hotel room, so flights cancels the flight it had booked and trips
//! cancels the request, and one costs more than the traveller's budget once charged, so
//! payments refunds first, then flights and hotels cancel, then trips. (In the trip with no
//! room, flights' booking may still be on its way when hotels aborts: trips, not knowing of
//! it yet, does not wait for it. The rule says so.)
//!
//! ```text
//! cargo run --example travel
//! CHOREO_URL=kafka://localhost:9092 cargo run --features kafka --example travel
//! ```
//! The transport comes from `CHOREO_URL` (default `memory://`); each service's store from
//! `CHOREO_STORE` (default `memory://`, `{service}` stands for the service's name, e.g.
//! `sqlite://data/{service}.db`).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context as _};
use choreo::{
    AbortReason, CompensationOrder, Context, Emit, Event, HandlerError, Saga, SagaData, SagaLog,
    SagaOutcome, SagaStart, Service, Step, StepResult, Store,
};
use serde::{Deserialize, Serialize};

const SERVICES: [&str; 4] = ["trips", "flights", "hotels", "payments"];

/// How long the run waits at start for its broker and stores to come up.
const STARTUP: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, Serialize, Deserialize, Event)]
#[event(name = "trips.TripRequested.v1")]
struct TripRequested {
    trip: u64,
    destination: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, Event)]
#[event(name = "flights.FlightBooked.v1")]
struct FlightBooked {
    trip: u64,
    flight: String,
    price_cents: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, Event)]
#[event(name = "hotels.HotelBooked.v1")]
struct HotelBooked {
    trip: u64,
    hotel: String,
    price_cents: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, Event)]
#[event(name = "payments.PaymentCharged.v1")]
struct PaymentCharged {
    trip: u64,
    amount_cents: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, Event)]
#[event(name = "payments.InvoiceIssued.v1")]
struct InvoiceIssued {
    trip: u64,
    account: String,
    amount_cents: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, Event)]
#[event(name = "trips.TripConfirmed.v1")]
struct TripConfirmed {
    trip: u64,
}

/// Payments' two outcomes, each with its own consumers and its own compensation.
#[derive(Emit)]
enum Payment {
    Charged(PaymentCharged),
    Invoiced(InvoiceIssued),
}

/// What every service agrees on: the topic, the deadline and the terminal events.
fn trip_saga() -> Saga {
    Saga::new("trips.saga")
        .timeout(Duration::from_secs(5))
        .completes_on::<TripConfirmed>()
        .completes_on::<InvoiceIssued>()
        .compensation_order(CompensationOrder::Reverse)
}

/// What the services did, for the run's summary: `(service, what)`.
type Ledger = Arc<Mutex<Vec<(&'static str, String)>>>;

fn note(ledger: &Ledger, service: &'static str, what: String) {
    ledger.lock().expect("not poisoned").push((service, what));
}

// ----- trips --------------------------------------------------------------------------------

fn trips_service(ledger: Ledger, store: Arc<dyn Store>) -> Service {
    let confirming = Arc::clone(&ledger);
    Service::builder("trips", &trip_saga())
        .store(store)
        .initiates::<TripRequested>()
        .compensate(move |trip: TripRequested, _: Context| {
            note(&ledger, "trips", format!("trip {} cancelled", trip.trip));
            async { Ok(()) }
        })
        .step(move |charged: PaymentCharged, cx: Context| {
            let budget = cx.saga_data().get::<u64>("budget_cents");
            let over_budget = matches!(budget, Ok(Some(budget)) if charged.amount_cents > budget);
            let what = if over_budget {
                format!("trip {} declined: over the budget", charged.trip)
            } else {
                format!("trip {} confirmed", charged.trip)
            };
            note(&confirming, "trips", what);
            async move {
                if over_budget {
                    return Ok(Step::reject("the charge is over the traveller's budget"));
                }
                budget.map_err(HandlerError::permanent)?;
                Ok(Step::done(TripConfirmed { trip: charged.trip }))
            }
        })
        .build()
        .expect("the trips service is well defined")
}

// ----- flights and hotels: two branches in parallel -----------------------------------------

fn flights_service(ledger: Ledger, store: Arc<dyn Store>) -> Service {
    let cancelling = Arc::clone(&ledger);
    Service::builder("flights", &trip_saga())
        .store(store)
        .step(move |trip: TripRequested, _: Context| {
            let flight = format!("CH{}", 100 + trip.trip);
            note(
                &ledger,
                "flights",
                format!("{flight} booked to {}", trip.destination),
            );
            async move {
                Ok(Step::done(FlightBooked {
                    trip: trip.trip,
                    flight,
                    price_cents: 18_000,
                }))
            }
        })
        .compensate(move |booked: FlightBooked, _: Context| {
            note(
                &cancelling,
                "flights",
                format!("{} cancelled", booked.flight),
            );
            async { Ok(()) }
        })
        .build()
        .expect("the flights service is well defined")
}

/// Cities where every room is taken.
const FULL: &str = "Venice";

fn hotels_service(ledger: Ledger, store: Arc<dyn Store>) -> Service {
    let cancelling = Arc::clone(&ledger);
    Service::builder("hotels", &trip_saga())
        .store(store)
        .step(move |trip: TripRequested, _: Context| {
            let booked = (trip.destination != FULL).then(|| {
                let hotel = format!("Grand {}", trip.destination);
                note(&ledger, "hotels", format!("{hotel} booked"));
                HotelBooked {
                    trip: trip.trip,
                    hotel,
                    price_cents: 24_000,
                }
            });
            async move {
                match booked {
                    Some(booked) => Ok(Step::done(booked)),
                    None => Ok(Step::reject(format!(
                        "no room left in {}",
                        trip.destination
                    ))),
                }
            }
        })
        .compensate(move |booked: HotelBooked, _: Context| {
            note(&cancelling, "hotels", format!("{} cancelled", booked.hotel));
            async { Ok(()) }
        })
        .build()
        .expect("the hotels service is well defined")
}

// ----- payments: the join, with two outcomes ------------------------------------------------

/// Charges the card the trip started with or, for a business trip, invoices its company.
fn pay(flight: &FlightBooked, hotel: &HotelBooked, cx: &Context) -> StepResult<Payment> {
    let amount_cents = flight.price_cents + hotel.price_cents;
    let data = cx.saga_data();
    if let Some(account) = data
        .get::<String>("account")
        .map_err(HandlerError::permanent)?
    {
        return Ok(Step::done(Payment::Invoiced(InvoiceIssued {
            trip: flight.trip,
            account,
            amount_cents,
        })));
    }
    if data
        .get::<String>("card_token")
        .map_err(HandlerError::permanent)?
        .is_none()
    {
        return Ok(Step::reject("no card and no company account"));
    }
    Ok(Step::done(Payment::Charged(PaymentCharged {
        trip: flight.trip,
        amount_cents,
    })))
}

fn payments_service(ledger: Ledger, store: Arc<dyn Store>) -> Service {
    let (refunding, voiding) = (Arc::clone(&ledger), Arc::clone(&ledger));
    Service::builder("payments", &trip_saga())
        .store(store)
        .join(
            move |(flight, hotel): (FlightBooked, HotelBooked), cx: Context| {
                let payment = pay(&flight, &hotel, &cx);
                if let Ok(Step::Done(payment)) = &payment {
                    let what = match payment {
                        Payment::Charged(charged) => {
                            format!("{} cents charged", charged.amount_cents)
                        }
                        Payment::Invoiced(invoice) => {
                            format!(
                                "{} cents invoiced to {}",
                                invoice.amount_cents, invoice.account
                            )
                        }
                    };
                    note(&ledger, "payments", format!("trip {}: {what}", flight.trip));
                }
                async move { payment }
            },
        )
        .compensate(move |charged: PaymentCharged, _: Context| {
            note(
                &refunding,
                "payments",
                format!("trip {} refunded", charged.trip),
            );
            async { Ok(()) }
        })
        .compensate(move |invoice: InvoiceIssued, _: Context| {
            note(
                &voiding,
                "payments",
                format!("trip {} invoice voided", invoice.trip),
            );
            async { Ok(()) }
        })
        .build()
        .expect("the payments service is well defined")
}

// ----- the run ------------------------------------------------------------------------------

async fn store_of(name: &str) -> anyhow::Result<Arc<dyn Store>> {
    let template = std::env::var("CHOREO_STORE").unwrap_or_else(|_| "memory://".to_owned());
    Ok(choreo::open_store_within(&template.replace("{service}", name), STARTUP).await?)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let telemetry = choreo::telemetry::Setup::new("travel")
        .default_log_filter("error")
        .init()?;
    run().await?;
    telemetry.shutdown();
    Ok(())
}

async fn run() -> anyhow::Result<()> {
    let url = std::env::var("CHOREO_URL").unwrap_or_else(|_| "memory://".to_owned());
    let transport = choreo::connect_within(&url, STARTUP).await?;
    println!(
        "choreo trip saga on {}\n",
        choreo::TransportUrl::parse(&url)?
    );
    let log = SagaLog::start(Arc::clone(&transport), &trip_saga(), "trip-saga-log").await?;

    let ledger = Ledger::default();
    let services = [
        trips_service(Arc::clone(&ledger), store_of("trips").await?),
        flights_service(Arc::clone(&ledger), store_of("flights").await?),
        hotels_service(Arc::clone(&ledger), store_of("hotels").await?),
        payments_service(Arc::clone(&ledger), store_of("payments").await?),
    ];
    let mut running = Vec::new();
    for service in services {
        running.push(service.run(Arc::clone(&transport)).await?);
    }
    let trips = &running[0];

    let card = SagaData::new().with("card_token", "tok_visa_4242")?;
    let plays = [
        ("Lisbon", card.clone(), "be confirmed", None),
        (
            "Oslo",
            SagaData::new().with("account", "ACME Corp")?,
            "be invoiced",
            None,
        ),
        (
            FULL,
            card.clone(),
            "find no room and be compensated",
            Some(AbortReason::Rejected),
        ),
        (
            "Rome",
            card.with("budget_cents", &40_000)?,
            "be over budget and undone from the charge back",
            Some(AbortReason::Rejected),
        ),
    ];
    let mut sagas = Vec::new();
    for (index, (destination, data, expectation, expected)) in plays.into_iter().enumerate() {
        let trip = index as u64 + 1;
        let saga = trips
            .start_saga_with(
                TripRequested {
                    trip,
                    destination: destination.to_owned(),
                },
                SagaStart::new().data(data),
            )
            .await?;
        sagas.push((trip, destination, saga, expectation, expected));
    }

    let mut surprises = Vec::new();
    for (trip, destination, saga, expectation, expected) in sagas {
        let outcome = log
            .wait_for_outcome(saga, &SERVICES, Duration::from_secs(30))
            .await
            .context("are all four services running?")?;
        let aborted = match &outcome {
            SagaOutcome::Completed => None,
            SagaOutcome::Compensated { reason, .. } => Some(*reason),
        };
        if aborted != expected {
            surprises.push(format!("trip {trip}: expected it to {expectation}"));
        }
        let verdict = match outcome {
            SagaOutcome::Completed => "COMPLETED".to_owned(),
            SagaOutcome::Compensated { reason, failed } if failed.is_empty() => {
                format!("COMPENSATED ({reason})")
            }
            SagaOutcome::Compensated { reason, failed } => {
                format!("COMPENSATED ({reason}), dead-lettered compensations: {failed:?}")
            }
        };
        println!("trip {trip} to {destination} (should {expectation}): {verdict}\n  saga {saga}");
        print!("{}", log.timeline(saga));
        println!();
    }
    for service in running {
        service.shutdown().await;
    }
    println!("what the services did:");
    for (service, what) in ledger.lock().expect("not poisoned").iter() {
        println!("  {service:<8} {what}");
    }
    if !surprises.is_empty() {
        bail!("unexpected outcomes: {}", surprises.join("; "));
    }
    Ok(())
}
